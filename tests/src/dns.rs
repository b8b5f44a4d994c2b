//! An authoritative DNS server on loopback whose answers each test sets.
//!
//! Built on `hickory-server` with a hand-written request handler instead of a zone file: tests
//! need answers a real zone cannot give (a name that is never answered, SERVFAIL) and a count of
//! the queries each name received, so DNS-cache behaviour can be asserted at the server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How long an idle TCP client may keep its connection to the server.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// CNAME chains longer than this are answered as far as they go.
const MAX_CNAME_HOPS: usize = 8;

/// What the server answers for one name (for every query type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A records for the IPv4 addresses, AAAA records for the IPv6 ones; a query for a family the
    /// list lacks gets an empty NOERROR answer (NODATA).
    Ips { addrs: Vec<IpAddr>, ttl: u32 },
    /// A CNAME to `target`, followed by the target's own answer when the zone has one.
    Cname { target: String, ttl: u32 },
    /// NXDOMAIN.
    NxDomain,
    /// SERVFAIL.
    ServFail,
    /// No response at all: the resolver times out.
    NeverAnswer,
}

impl Answer {
    /// Shorthand: these addresses with a 60 s TTL.
    pub fn ips(addrs: &[IpAddr]) -> Self {
        Answer::Ips {
            addrs: addrs.to_vec(),
            ttl: 60,
        }
    }
}

/// Records and query counters, shared between the test and the server task.
#[derive(Default, Debug)]
struct Zone {
    /// Keys are canonical names (lower case, no trailing dot); `*.suffix` is a wildcard for
    /// one or more labels under `suffix`, as in the filter's allowlist.
    answers: HashMap<String, Answer>,
    /// Queries received, by canonical query name.
    queries: HashMap<String, usize>,
}

impl Zone {
    /// The answer for `name`: the exact entry, else the closest enclosing wildcard.
    fn lookup(&self, name: &str) -> Option<&Answer> {
        if let Some(answer) = self.answers.get(name) {
            return Some(answer);
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(answer) = self.answers.get(&format!("*.{parent}")) {
                return Some(answer);
            }
            rest = parent;
        }
        None
    }
}

fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A DNS server bound to `127.0.0.1:<ephemeral>` over UDP and TCP (same port). It stops when the
/// value is dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    shutdown: CancellationToken,
}

impl DnsServer {
    /// Binds UDP and TCP on one free loopback port and starts serving on the current runtime.
    pub async fn start() -> anyhow::Result<Self> {
        // Pick the port with UDP, then take the same port for TCP; retry on the rare clash.
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            let addr = udp.local_addr()?;
            let Ok(tcp) = TcpListener::bind(addr).await else {
                continue;
            };
            let zone = Arc::new(Mutex::new(Zone::default()));
            let mut server = Server::new(Handler { zone: zone.clone() });
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE, 64 * 1024);
            let shutdown = server.shutdown_token().clone();
            tokio::spawn(async move {
                // Ends when the token is cancelled; an error only means a socket died early.
                let _ = server.block_until_done().await;
            });
            return Ok(DnsServer {
                addr,
                zone,
                shutdown,
            });
        }
        anyhow::bail!("could not bind UDP and TCP on the same loopback port")
    }

    /// Where the server listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        // A panicking test thread cannot leave the zone half-written: every write is one insert.
        self.zone
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets (or replaces) the answer for `name` (`*.suffix` for a wildcard).
    pub fn set(&self, name: &str, answer: Answer) {
        self.zone().answers.insert(canonical(name), answer);
    }

    /// Removes the answer for `name`; later queries get NXDOMAIN unless a wildcard matches.
    pub fn remove(&self, name: &str) {
        self.zone().answers.remove(&canonical(name));
    }

    /// How many queries (any type, UDP or TCP) the server received for `name`.
    pub fn queries(&self, name: &str) -> usize {
        self.zone()
            .queries
            .get(&canonical(name))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Handler {
    zone: Arc<Mutex<Zone>>,
}

/// What to send for one query, computed under the zone lock and sent after releasing it.
enum Reply {
    Records(Vec<Record>),
    Code(ResponseCode),
    Nothing,
}

impl Handler {
    fn decide(&self, qname: &str, qtype: RecordType) -> Reply {
        let mut zone = self.zone.lock().unwrap_or_else(|p| p.into_inner());
        *zone.queries.entry(qname.to_string()).or_default() += 1;

        let mut records = Vec::new();
        let mut name = qname.to_string();
        for _ in 0..MAX_CNAME_HOPS {
            let Some(answer) = zone.lookup(&name).cloned() else {
                // Nothing at all for the first name is NXDOMAIN; a dangling CNAME answers
                // with the chain it has.
                return if records.is_empty() {
                    Reply::Code(ResponseCode::NXDomain)
                } else {
                    Reply::Records(records)
                };
            };
            let Ok(owner) = Name::from_ascii(format!("{name}.")) else {
                return Reply::Code(ResponseCode::ServFail);
            };
            match answer {
                Answer::Ips { addrs, ttl } => {
                    for ip in addrs {
                        match (ip, qtype) {
                            (IpAddr::V4(v4), RecordType::A) => records.push(Record::from_rdata(
                                owner.clone(),
                                ttl,
                                RData::A(A(v4)),
                            )),
                            (IpAddr::V6(v6), RecordType::AAAA) => records.push(Record::from_rdata(
                                owner.clone(),
                                ttl,
                                RData::AAAA(AAAA(v6)),
                            )),
                            _ => {}
                        }
                    }
                    return Reply::Records(records);
                }
                Answer::Cname { target, ttl } => {
                    let target = canonical(&target);
                    let Ok(target_name) = Name::from_ascii(format!("{target}.")) else {
                        return Reply::Code(ResponseCode::ServFail);
                    };
                    records.push(Record::from_rdata(
                        owner,
                        ttl,
                        RData::CNAME(CNAME(target_name)),
                    ));
                    if qtype == RecordType::CNAME {
                        return Reply::Records(records);
                    }
                    name = target;
                }
                Answer::NxDomain => return Reply::Code(ResponseCode::NXDomain),
                Answer::ServFail => return Reply::Code(ResponseCode::ServFail),
                Answer::NeverAnswer => return Reply::Nothing,
            }
        }
        Reply::Records(records)
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let serve_failed = || {
            let mut header = hickory_server::proto::op::Header {
                metadata: hickory_server::proto::op::Metadata::response_from_request(
                    &request.metadata,
                ),
                counts: Default::default(),
            };
            header.metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(header)
        };
        let Ok(info) = request.request_info() else {
            return serve_failed();
        };
        let qname = canonical(&info.query.name().to_string());
        let qtype = info.query.query_type();
        let reply = self.decide(&qname, qtype);

        // Echo EDNS when the client used it (c-ares does), as a real server would.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = edns.as_ref() {
            builder.edns(edns);
        }
        let mut metadata =
            hickory_server::proto::op::Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let sent = match reply {
            Reply::Nothing => return serve_failed(),
            Reply::Code(code) => {
                metadata.response_code = code;
                response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await
            }
            Reply::Records(records) => {
                response_handle
                    .send_response(builder.build(metadata, records.iter(), [], [], []))
                    .await
            }
        };
        sent.unwrap_or_else(|_| serve_failed())
    }
}
