//! Envoy fidelity: the scenario table (`tests/cases/requests`, `tests/fidelity/cases`) against
//! real Envoy 1.40 and host-sim from the same YAML, the same wasm and the same requests. Each
//! answer must meet the case's expectations, and the two answers must agree after
//! normalisation unless `tests/fidelity/differences.yaml` documents the difference. Writes
//! `docs/fidelity.md` when the whole table ran.
//!
//! `DFP_FIDELITY_VARIANTS=a,b` runs only those variants (and writes no report).

use tests::fidelity::{self, report};
use tests::rt::block_on;
use tests::wasm::workspace_root;

/// The floor for the size of the table.
const MIN_CASES: usize = 150;

#[test]
fn envoy_and_host_sim_agree_on_the_table() {
    let only: Option<Vec<String>> = std::env::var("DFP_FIDELITY_VARIANTS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let result = block_on(fidelity::run(only.as_deref())).expect("the fidelity table runs");
    if result.complete {
        let path = workspace_root().join("docs").join("fidelity.md");
        std::fs::write(&path, report::markdown(&result))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        assert!(
            result.outcomes.len() >= MIN_CASES,
            "the table has {} cases, fewer than {MIN_CASES}",
            result.outcomes.len()
        );
    }
    let failures = result.failures();
    assert!(
        failures.is_empty(),
        "{} fidelity failure(s):\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| result.unport(f))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// The fidelity fixtures themselves, over real sockets: a behaviour that silently did nothing
// would make both proxies agree for the wrong reason.

mod fixtures {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use tests::client::{self, Request};
    use tests::fidelity::fixtures::Fixtures;
    use tests::fidelity::model::{Behaviour, Respond};
    use tests::rt::block_on;
    use tests::upstream::CASE_ID_HEADER;
    use tokio::io::AsyncReadExt;

    fn request(id: &str) -> Vec<u8> {
        Request {
            method: "POST".into(),
            target: "/scripted".into(),
            headers: vec![
                ("host".into(), "api.dfp.test".into()),
                (CASE_ID_HEADER.into(), id.into()),
                ("connection".into(), "close".into()),
            ],
            body: b"sent".to_vec(),
        }
        .to_bytes()
    }

    fn scripted(f: &Fixtures) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], f.scripted.port()))
    }

    #[test]
    fn scripted_upstream_does_what_each_case_says() {
        block_on(async {
            let f = Fixtures::shared().await.expect("fixtures");
            let addr = scripted(&f);

            f.scripted.script("fx/echo", Behaviour::Echo);
            let echo = client::exchange(addr, &request("fx/echo"), false)
                .await
                .expect("echo");
            assert_eq!(echo.status, 200);
            let seen = f.scripted.seen_for_case("fx/echo");
            assert_eq!(seen.len(), 1);
            assert_eq!(
                (seen[0].method.as_str(), seen[0].body.as_str()),
                ("POST", "sent")
            );

            f.scripted.script("fx/reset", Behaviour::Reset);
            let reset = client::exchange(addr, &request("fx/reset"), false).await;
            assert!(reset.is_err(), "a reset answers nothing: {reset:?}");
            assert_eq!(
                f.scripted.seen_for_case("fx/reset").len(),
                1,
                "recorded first"
            );

            f.scripted.script("fx/close", Behaviour::Close);
            let closed = client::exchange(addr, &request("fx/close"), false).await;
            assert!(
                matches!(closed, Err(client::ClientError::Truncated(0))),
                "{closed:?}"
            );

            f.scripted.script("fx/delay", Behaviour::Delay { ms: 300 });
            let started = Instant::now();
            let delayed = client::exchange(addr, &request("fx/delay"), false)
                .await
                .expect("delayed");
            assert_eq!(delayed.status, 200);
            assert!(started.elapsed() >= Duration::from_millis(300));

            f.scripted.script(
                "fx/respond",
                Behaviour::Respond(Respond {
                    status: 418,
                    headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
                    body: None,
                    body_bytes: Some(40_000),
                    chunked: true,
                    delay_ms: 0,
                }),
            );
            let answered = client::exchange(addr, &request("fx/respond"), false)
                .await
                .expect("respond");
            assert_eq!(answered.status, 418);
            assert_eq!(answered.header("transfer-encoding"), Some("chunked"));
            assert_eq!(answered.body, tests::cases::generated_body(40_000));
            let values: Vec<&str> = answered
                .headers
                .iter()
                .filter(|(k, _)| k == "x-a")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(values, ["1", "2"]);

            f.scripted.script(
                "fx/truncate",
                Behaviour::Truncate {
                    declared: 5000,
                    sent: 100,
                },
            );
            let cut = client::exchange_streaming(addr, request("fx/truncate"), false)
                .await
                .expect("head");
            assert_eq!(cut.response.status, 200);
            assert_eq!(cut.response.header("content-length"), Some("5000"));
            assert_eq!(cut.response.body.len(), 100);
            assert!(cut.truncated.is_some());
        });
    }

    #[test]
    fn refused_port_refuses_and_sink_never_answers() {
        block_on(async {
            let f = Fixtures::shared().await.expect("fixtures");
            let refused = tokio::net::TcpStream::connect(("127.0.0.1", f.refused.port())).await;
            assert_eq!(
                refused.map(|_| ()).map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionRefused)
            );

            let mut sink = tokio::net::TcpStream::connect(("127.0.0.1", f.sink.port()))
                .await
                .expect("the sink accepts");
            tokio::io::AsyncWriteExt::write_all(&mut sink, &request("fx/sink"))
                .await
                .expect("the sink reads");
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_millis(300), sink.read(&mut buf)).await;
            assert!(read.is_err(), "the sink must not answer: {read:?}");
        });
    }
}
