//! The fixtures themselves, checked over real sockets: a suite is only as good as the DNS
//! server, upstreams and client it stands on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::op::{Message, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use tests::client::{self, Request};
use tests::dns::{Answer, DnsServer};
use tests::pki::Pki;
use tests::rt::block_on;
use tests::upstream::{EchoServer, Seen, TcpEcho, CASE_ID_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Sends one UDP query; `None` when no answer came within `wait`.
async fn udp_query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    wait: Duration,
) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut query = Message::query();
    query.metadata.id = 4242;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    socket
        .send_to(&query.to_vec().expect("encode"), server)
        .await
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let message = Message::from_vec(&buf[..n]).expect("decode");
    assert_eq!(message.metadata.id, 4242);
    Some(message)
}

/// The same over TCP (2-byte length prefix).
async fn tcp_query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    let mut query = Message::query();
    query.metadata.id = 7;
    query.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let bytes = query.to_vec().expect("encode");
    let len = u16::try_from(bytes.len()).expect("short query");
    stream.write_all(&len.to_be_bytes()).await.expect("write");
    stream.write_all(&bytes).await.expect("write");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.expect("read length");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.expect("read message");
    Message::from_vec(&buf).expect("decode")
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

const WAIT: Duration = Duration::from_secs(3);

#[test]
fn dns_answers_records_set_per_test() {
    block_on(async {
        let dns = DnsServer::start().await.expect("dns");
        let v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        dns.set(
            "both.example.test",
            Answer::Ips {
                addrs: vec![v4, v6],
                ttl: 5,
            },
        );

        let a = udp_query(dns.addr(), "both.example.test.", RecordType::A, WAIT)
            .await
            .expect("answer");
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&a), vec![v4]);
        assert_eq!(a.answers[0].ttl, 5);

        let aaaa = udp_query(dns.addr(), "BOTH.example.test.", RecordType::AAAA, WAIT)
            .await
            .expect("answer");
        assert_eq!(addresses(&aaaa), vec![v6], "names are case-insensitive");

        let tcp = tcp_query(dns.addr(), "both.example.test.", RecordType::A).await;
        assert_eq!(addresses(&tcp), vec![v4], "TCP on the same port");

        assert_eq!(
            dns.queries("both.example.test"),
            3,
            "every query is counted"
        );
        assert_eq!(dns.queries("other.example.test"), 0);

        // Replacing an answer takes effect for the next query.
        let v4b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8));
        dns.set("both.example.test", Answer::ips(&[v4b]));
        let a = udp_query(dns.addr(), "both.example.test.", RecordType::A, WAIT)
            .await
            .expect("answer");
        assert_eq!(addresses(&a), vec![v4b]);
    });
}

#[test]
fn dns_wildcards_cnames_and_failures() {
    block_on(async {
        let dns = DnsServer::start().await.expect("dns");
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
        dns.set("*.zone.test", Answer::ips(&[ip]));
        dns.set(
            "alias.other.test",
            Answer::Cname {
                target: "x.y.zone.test".into(),
                ttl: 30,
            },
        );
        dns.set("gone.zone.test", Answer::NxDomain);
        dns.set("broken.zone.test", Answer::ServFail);
        dns.set("silent.zone.test", Answer::NeverAnswer);

        let deep = udp_query(dns.addr(), "a.b.zone.test.", RecordType::A, WAIT)
            .await
            .expect("answer");
        assert_eq!(addresses(&deep), vec![ip], "wildcard covers several labels");

        let apex = udp_query(dns.addr(), "zone.test.", RecordType::A, WAIT)
            .await
            .expect("answer");
        assert_eq!(
            apex.metadata.response_code,
            ResponseCode::NXDomain,
            "not the suffix itself"
        );

        let alias = udp_query(dns.addr(), "alias.other.test.", RecordType::A, WAIT)
            .await
            .expect("answer");
        assert!(matches!(alias.answers[0].data, RData::CNAME(_)));
        assert_eq!(
            addresses(&alias),
            vec![ip],
            "CNAME chain followed inside the zone"
        );

        let gone = udp_query(dns.addr(), "gone.zone.test.", RecordType::A, WAIT)
            .await
            .expect("answer");
        assert_eq!(
            gone.metadata.response_code,
            ResponseCode::NXDomain,
            "exact entry beats wildcard"
        );

        let broken = udp_query(dns.addr(), "broken.zone.test.", RecordType::A, WAIT)
            .await
            .expect("answer");
        assert_eq!(broken.metadata.response_code, ResponseCode::ServFail);

        let silent = udp_query(
            dns.addr(),
            "silent.zone.test.",
            RecordType::A,
            Duration::from_millis(700),
        )
        .await;
        assert!(silent.is_none(), "never-answer names get no response");
        assert_eq!(
            dns.queries("silent.zone.test"),
            1,
            "but the query is counted"
        );

        let v6_only_missing = udp_query(dns.addr(), "a.zone.test.", RecordType::AAAA, WAIT)
            .await
            .expect("answer");
        assert_eq!(
            v6_only_missing.metadata.response_code,
            ResponseCode::NoError
        );
        assert!(
            v6_only_missing.answers.is_empty(),
            "NODATA for a family the name lacks"
        );
    });
}

#[test]
fn echo_reports_what_it_received_and_client_parses_it() {
    block_on(async {
        let echo = EchoServer::plain("plain").await.expect("echo");
        let request = Request {
            method: "POST".into(),
            target: "/p?q=1".into(),
            headers: vec![
                ("Host".into(), "api.example.test:8080".into()),
                (CASE_ID_HEADER.into(), "fixtures/echo".into()),
                ("connection".into(), "close".into()),
            ],
            body: b"hello".to_vec(),
        };
        let response = client::exchange(echo.addr(), &request.to_bytes(), false)
            .await
            .expect("exchange");
        assert_eq!(response.status, 200);
        let seen: Seen = serde_json::from_slice(&response.body).expect("echo JSON");
        assert_eq!(seen.server, "plain");
        assert!(!seen.tls);
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/p?q=1");
        assert_eq!(seen.authority.as_deref(), Some("api.example.test:8080"));
        assert_eq!(seen.body, "hello");
        assert_eq!(echo.seen_for_case("fixtures/echo"), vec![seen]);
        assert!(echo.seen_for_case("fixtures/other").is_empty());
        assert_eq!(echo.connections(), 1);
    });
}

#[test]
fn tls_echo_serves_a_certificate_the_test_ca_vouches_for() {
    block_on(async {
        let pki = Pki::new().expect("pki");
        let leaf = pki.leaf("svc", &["svc.example.test"]).expect("leaf");
        assert!(pki.ca_file().is_file() && leaf.cert_file.is_file() && leaf.key_file.is_file());
        let echo = EchoServer::tls("tls", leaf.server_config().expect("config"))
            .await
            .expect("echo");

        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der().clone()).expect("add CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

        // The right name: handshake succeeds and the server records the SNI.
        let tcp = TcpStream::connect(echo.addr()).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("svc.example.test").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: svc.example.test\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await.ok();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let seen = &echo.seen()[0];
        assert!(seen.tls);
        assert_eq!(seen.sni.as_deref(), Some("svc.example.test"));

        // Another name: the client refuses the certificate.
        let tcp = TcpStream::connect(echo.addr()).await.expect("connect");
        let wrong = rustls::pki_types::ServerName::try_from("other.example.test").expect("name");
        assert!(connector.connect(wrong, tcp).await.is_err());
    });
}

#[test]
fn tcp_echo_returns_bytes() {
    block_on(async {
        let echo = TcpEcho::start().await.expect("tcp echo");
        let mut stream = TcpStream::connect(echo.addr()).await.expect("connect");
        stream.write_all(b"abc\x00\xff").await.expect("write");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"abc\x00\xff");
        assert_eq!(echo.connections(), 1);
    });
}

#[test]
fn client_reads_chunked_bodies_and_stops_at_content_length() {
    block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n")
                .await
                .expect("write");
            let (mut s, _) = listener.accept().await.expect("accept");
            let _ = s.read(&mut buf).await;
            // A length-delimited body, then the connection stays open: the client must not wait.
            s.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let get = Request {
            method: "GET".into(),
            target: "/".into(),
            headers: vec![],
            body: vec![],
        };
        let chunked = client::exchange(addr, &get.to_bytes(), false)
            .await
            .expect("chunked");
        assert_eq!(chunked.status, 200);
        assert_eq!(chunked.body, b"Wikipedia");
        assert_eq!(chunked.header("x-a"), Some("1"));
        let start = std::time::Instant::now();
        let sized = tokio::time::timeout(
            Duration::from_secs(3),
            client::exchange(addr, &get.to_bytes(), false),
        )
        .await
        .expect("must not wait for close")
        .expect("sized");
        assert_eq!((sized.status, sized.body.as_slice()), (403, &b"ok"[..]));
        assert!(start.elapsed() < Duration::from_secs(3));
        server.abort();
    });
}
