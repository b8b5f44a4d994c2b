//! Each hostcall family through a guest built with the proxy-wasm Rust SDK (`abi-probe`),
//! which panics on any status it does not expect — so a passing test also proves the host
//! answers with statuses the SDK accepts.

use host_sim::harness::{Harness, Request, Response, Stage};
use host_sim::{Action, LogLevel, PropertyValue, SharedState};

use crate::common::{guest, runtime, WASM32};

fn probe() -> host_sim::harness::HarnessBuilder {
    Harness::builder(&guest("abi-probe", WASM32))
        .runtime(runtime())
        .name("probe-plugin")
        .root_id("probe-root")
        .vm_id("probe-vm")
        .cluster("auth")
}

fn req(scenario: &str) -> Request {
    Request::get("http://svc.test/p?q=1").header("x-probe", scenario)
}

#[test]
fn lifecycle_and_configuration_buffers() {
    let h = probe().plugin_config("hello").build().expect("loads");
    assert!(
        h.logged("configured root 1 with \"hello\""),
        "{:?}",
        h.logs()
    );

    let refused = probe().plugin_config("refuse").build();
    match refused {
        Err(host_sim::vm::LoadError::ConfigureFailed { log }) => {
            assert_eq!(log, vec!["probe: configuration refused".to_string()])
        }
        other => panic!("{other:?}"),
    }
    let refused = probe().vm_config("refuse").build();
    assert!(
        matches!(refused, Err(host_sim::vm::LoadError::VmStartFailed { .. })),
        "{refused:?}"
    );
}

#[test]
fn header_maps_get_add_replace_remove() {
    let mut h = probe().build().expect("loads");
    let out = h
        .run(
            req("headers")
                .header("x-replace", "old")
                .header("x-replace", "older")
                .header("x-remove", "bye"),
        )
        .expect("runs");
    assert_eq!(out.stage, Stage::Finished);
    assert_eq!(
        out.action("proxy_on_request_headers"),
        Some(Action::Continue)
    );
    let sent = out.upstream_request.expect("reached upstream").headers;
    // :method :scheme :authority :path x-probe x-replace x-replace x-remove
    assert_eq!(sent.get_str("x-count"), Some("8/8"));
    assert_eq!(sent.get_str("x-eos"), Some("true"));
    assert_eq!(sent.get_all("x-added"), vec![&b"1"[..], &b"2"[..]]);
    assert_eq!(sent.get_all("x-replace"), vec![&b"new"[..]]);
    assert_eq!(sent.get("x-remove"), None);
    assert_eq!(sent.get_str("x-path-seen"), Some("/p?q=1"));
    assert_eq!(sent.get_str("x-missing-is"), Some("none"));
}

#[test]
fn set_header_pairs_replaces_the_whole_map() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("set-pairs").header("x-gone", "1")).expect("runs");
    let sent = out.upstream_request.expect("forwarded").headers;
    assert_eq!(sent.get_str(":path"), Some("/rewritten"));
    assert_eq!(sent.get_str(":authority"), Some("new.test"));
    assert_eq!(sent.get("x-gone"), None);
    assert_eq!(sent.len(), 4);
}

#[test]
fn local_reply_short_circuits_and_runs_response_callbacks() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("local")).expect("runs");
    assert!(!out.reached_upstream);
    assert_eq!(out.status(), 403);
    let reply = out.local_reply.clone().expect("local reply");
    assert_eq!(reply.body, b"{\"denied\":true}");
    assert_eq!(reply.headers.get_str("x-why"), Some("probe"));
    assert_eq!(reply.grpc_status, None, "the SDK passes -1");
    // The guest returned Continue, but a local reply stops iteration, as in Envoy.
    assert_eq!(out.action("proxy_on_request_headers"), Some(Action::Pause));
    // Envoy runs the local reply through the filter's encoder callbacks.
    assert_eq!(out.response_headers.get_str("x-resp"), Some("local"));
    assert_eq!(out.response_body, b"{\"denied\":true}");
    assert!(h.logged("probe: log local /p?q=1 403"), "{:?}", h.logs());
}

#[test]
fn request_body_is_buffered_while_paused_and_rewritten() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("body").body("hello world")).expect("runs");
    assert_eq!(out.action("proxy_on_request_body"), Some(Action::Continue));
    let up = out.upstream_request.expect("forwarded");
    assert_eq!(up.body, b"HELLO WORLD");

    // Chunk by chunk through the instance: the first chunk pauses, the second sees both.
    let inst = h.instance();
    let s = inst.create_stream(Default::default()).expect("stream");
    inst.stream_state_mut(s).expect("state").request_headers =
        host_sim::HeaderMap::from_pairs([(":path", "/"), ("x-probe", "body")]);
    assert_eq!(
        inst.on_request_headers(s, false).expect("headers"),
        Action::Continue
    );
    assert_eq!(
        inst.on_request_body(s, b"abc", false).expect("chunk 1"),
        Action::Pause
    );
    assert_eq!(
        inst.on_request_body(s, b"def", true).expect("chunk 2"),
        Action::Continue
    );
    assert_eq!(inst.stream_state(s).expect("state").request_body, b"ABCDEF");
    inst.finish_stream(s).expect("finish");
}

#[test]
fn response_body_rewrite_and_response_headers() {
    let mut h = probe().build().expect("loads");
    let out = h
        .run(req("response").upstream_response(Response::new(201).body("payload")))
        .expect("runs");
    assert_eq!(out.status(), 201);
    assert_eq!(out.response_headers.get_str("x-resp"), Some("response"));
    assert_eq!(out.response_body, b"wrapped:payload");
}

#[test]
fn http_call_pauses_until_answered_then_continues() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("http-call")).expect("runs");
    assert_eq!(out.stage, Stage::RequestPaused);
    assert!(!out.reached_upstream);
    let calls = h.pending_http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.cluster, "auth");
    assert_eq!(call.headers.get_str(":path"), Some("/check"));
    assert_eq!(call.headers.get_str("content-length"), Some("3"));
    assert_eq!(call.body, b"who");
    assert_eq!(call.trailers.get_str("x-trailer"), Some("t"));
    assert_eq!(call.timeout_ms, 1500);

    h.respond_http_call(call.token, Some(Response::new(200).body("alice")))
        .expect("delivered");
    let done = h.outcome(out.stream).expect("tracked").clone();
    assert_eq!(done.stage, Stage::Finished);
    assert!(done.reached_upstream);
    let up = done.upstream_request.expect("forwarded");
    assert_eq!(up.headers.get_str("x-auth"), Some("alice"));
    assert!(h.logged(&format!("call {} answered 200 with 1 headers", call.token)));
    assert!(h.pending_http_calls().is_empty());
    // A token is answered once.
    assert!(h.respond_http_call(call.token, None).is_err());
}

#[test]
fn failed_http_call_leads_to_local_reply() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("http-call")).expect("runs");
    let token = h.pending_http_calls()[0].token;
    h.respond_http_call(token, None).expect("delivered");
    let done = h.outcome(out.stream).expect("tracked");
    assert_eq!(done.stage, Stage::Finished);
    assert_eq!(done.status(), 502);
    assert!(!done.reached_upstream);
    // Envoy reports a failed call as BrokenConnection, "reset".
    let reply = done.local_reply.as_ref().expect("local reply");
    assert_eq!(reply.headers.get_str("x-call-status"), Some("11"));
    assert_eq!(reply.headers.get_str("x-call-message"), Some("reset"));
}

#[test]
fn http_call_to_unknown_cluster_or_without_required_headers_is_bad_argument() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("http-call-bad-cluster")).expect("runs");
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-call-error"), Some("BadArgument"));
    assert_eq!(up.get_str("x-call-error-headers"), Some("BadArgument"));
    assert!(h.pending_http_calls().is_empty());
}

#[test]
fn properties_present_exactly_when_provided() {
    let mut h = probe()
        .root_property("xds.node", "node-1")
        .build()
        .expect("loads");
    let with = req("props")
        .property("source.address", "10.1.2.3:5555")
        .property("source.port", PropertyValue::Int(5555))
        .property("xds.route_name", "r1")
        .property("connection.id", PropertyValue::Uint(77));
    let out = h.run(with).expect("runs");
    let up = out.upstream_request.clone().expect("forwarded").headers;
    assert_eq!(up.get_str("x-prop-source"), Some("10.1.2.3:5555"));
    assert_eq!(up.get_str("x-prop-source-port"), Some("int:5555"));
    assert_eq!(up.get_str("x-prop-plugin"), Some("probe-plugin"));
    assert_eq!(up.get_str("x-prop-root"), Some("probe-root"));
    assert_eq!(up.get_str("x-prop-vm"), Some("probe-vm"));
    assert_eq!(up.get_str("x-prop-route"), Some("r1"));
    assert_eq!(up.get_str("x-prop-node"), Some("node-1"));
    assert_eq!(up.get_str("x-prop-path"), Some("/p?q=1"));
    assert_eq!(up.get_str("x-prop-method"), Some("GET"));
    assert_eq!(up.get_str("x-prop-header"), Some("props"));
    assert_eq!(up.get_str("x-prop-conn"), Some("int:77"));
    // Not an upstream filter: Envoy has no upstream.address here.
    assert_eq!(up.get_str("x-prop-upstream"), Some("absent"));
    assert_eq!(up.get_str("x-prop-state"), Some("v1"));
    assert_eq!(up.get_str("x-prop-bare"), Some("SerializationFailure"));
    assert_eq!(out.property_set(&["probe_state"]), Some(&b"v1"[..]));

    let without = h.run(req("props")).expect("runs");
    let up = without.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-prop-source"), Some("absent"));
    assert_eq!(up.get_str("x-prop-route"), Some("absent"));
    assert_eq!(up.get_str("x-prop-conn"), Some("absent"));

    let upstream_stage = req("props").property("upstream.address", "127.0.0.1:80");
    let out = h.run(upstream_stage).expect("runs");
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-prop-upstream"), Some("127.0.0.1:80"));
}

#[test]
fn metrics_define_increment_record_get() {
    let shared = SharedState::new();
    let mut h = probe().shared(shared.clone()).build().expect("loads");
    h.run(req("headers")).expect("runs");
    let out = h.run(req("metrics")).expect("runs");
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-requests"), Some("2"));
    assert_eq!(up.get_str("x-inflight"), Some("1"));
    assert_eq!(up.get_str("x-hist-get"), Some("BadArgument"));
    assert_eq!(up.get_str("x-counter-dec"), Some("BadArgument"));
    assert_eq!(up.get_str("x-unknown"), Some("NotFound"));
    assert_eq!(h.metric("probe.requests"), Some(2));
    assert_eq!(h.metric("probe.inflight"), Some(0));
    let hist = shared
        .metrics
        .snapshot_of("probe.sizes")
        .expect("histogram");
    assert_eq!((hist.count, hist.value, hist.samples), (2, 12, vec![7, 5]));

    // A second instance (another worker) counts into the same metrics.
    let mut other = probe().shared(shared.clone()).build().expect("loads");
    other.run(req("headers")).expect("runs");
    assert_eq!(shared.metrics.get("probe.requests"), Some(3));
}

#[test]
fn shared_data_compare_and_swap_across_instances() {
    let shared = SharedState::new();
    let mut a = probe().shared(shared.clone()).build().expect("loads");
    let mut b = probe().shared(shared.clone()).build().expect("loads");
    let out = a.run(req("shared")).expect("runs");
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-shared-set"), Some("ok"));
    assert_eq!(up.get_str("x-shared-stale"), Some("CasMismatch"));
    assert_eq!(up.get_str("x-shared-value"), Some("1"));
    let out = b.run(req("shared")).expect("runs");
    assert_eq!(
        out.upstream_request
            .expect("fwd")
            .headers
            .get_str("x-shared-value"),
        Some("2")
    );
    // Another vm_id does not see this data.
    let mut c = probe()
        .vm_id("other-vm")
        .shared(shared)
        .build()
        .expect("loads");
    let out = c.run(req("shared")).expect("runs");
    assert_eq!(
        out.upstream_request
            .expect("fwd")
            .headers
            .get_str("x-shared-value"),
        Some("1")
    );
}

#[test]
fn shared_queue_enqueue_notifies_the_registering_root() {
    let shared = SharedState::new();
    let mut owner = probe().shared(shared.clone()).build().expect("loads");
    let mut other = probe().shared(shared.clone()).build().expect("loads");
    let out = other
        .run(req("queue").set_header(":path", "/from-other"))
        .expect("runs");
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-queue-resolved"), Some("true"));
    assert_eq!(up.get_str("x-queue-missing"), Some("none"));
    assert_eq!(up.get_str("x-queue-bad"), Some("NotFound"));
    // Both registered the queue at start; the last registrant (other) is notified, as cpp-host's
    // SharedQueue::registerQueue overwrites the subscriber. Nothing runs until delivery.
    assert!(!other.logged("dequeued"));
    assert_eq!(owner.deliver_queue_ready().expect("deliver"), 0);
    assert_eq!(other.deliver_queue_ready().expect("deliver"), 1);
    assert!(
        other.logged("probe: dequeued /from-other"),
        "{:?}",
        other.logs()
    );
    assert_eq!(shared.metrics.get("probe.dequeued"), Some(1));
}

#[test]
fn ticks_run_on_the_root_and_can_resume_a_paused_stream() {
    let mut h = probe().plugin_config("tick=25").build().expect("loads");
    assert_eq!(
        h.instance().tick_period(),
        Some(std::time::Duration::from_millis(25))
    );
    let out = h.run(req("tick-wait")).expect("runs");
    assert_eq!(out.stage, Stage::RequestPaused);
    assert!(h.tick().expect("tick"));
    let done = h.outcome(out.stream).expect("tracked");
    assert_eq!(done.stage, Stage::Finished);
    assert_eq!(
        done.upstream_request
            .as_ref()
            .expect("fwd")
            .headers
            .get_str("x-ticked"),
        Some("1")
    );
    assert!(h.tick().expect("tick"));
    assert!(h.logged("probe: tick 2"));

    let mut no_ticks = probe().build().expect("loads");
    assert_eq!(no_ticks.instance().tick_period(), None);
    assert!(!no_ticks.tick().expect("tick"));
}

#[test]
fn foreign_functions_and_grpc_statuses() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("foreign")).expect("runs");
    let up = out.upstream_request.clone().expect("forwarded").headers;
    assert_eq!(up.get_str("x-clear"), Some("ok"));
    assert_eq!(up.get_str("x-unknown-fn"), Some("NotFound"));
    assert_eq!(out.effects.clear_route_cache, 1);

    let out = h.run(req("grpc")).expect("runs");
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-grpc"), Some("InternalFailure"));
    assert_eq!(up.get_str("x-grpc-unknown"), Some("ParseFailure"));
}

#[test]
fn logs_by_level_respect_the_host_level() {
    let mut h = probe().log_level(LogLevel::Warn).build().expect("loads");
    let out = h.run(req("log")).expect("runs");
    let up = out.upstream_request.expect("forwarded").headers;
    assert_eq!(up.get_str("x-log-level"), Some("3"));
    let now: u64 = up
        .get_str("x-now-secs")
        .and_then(|s| s.parse().ok())
        .expect("time");
    assert!(now > 1_600_000_000);
    assert!(h.logs_at(LogLevel::Info).is_empty());
    assert_eq!(h.logs_at(LogLevel::Warn), vec!["probe: level warn"]);
    assert_eq!(h.logs_at(LogLevel::Error), vec!["probe: level error"]);
    assert_eq!(h.logs_at(LogLevel::Critical), vec!["probe: level critical"]);
}

#[test]
fn close_stream_is_reported() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("close")).expect("runs");
    assert!(out.effects.close_response);
    assert!(!out.effects.close_request);
}

#[test]
fn a_trap_fails_only_its_stream_and_the_vm_restarts() {
    let mut h = probe().build().expect("loads");
    for scenario in ["trap-headers", "trap-body", "trap-log"] {
        let out = h.run(req(scenario).body("b")).expect("runs");
        assert_eq!(out.stage, Stage::Failed, "{scenario}");
        assert_eq!(out.status(), 503);
        let trap = out.trap.expect("trap message");
        assert!(trap.contains("trapped"), "{scenario}: {trap}");
        // The next stream runs on a fresh VM.
        let ok = h.run(req("headers")).expect("runs");
        assert_eq!(ok.stage, Stage::Finished, "after {scenario}");
        assert!(ok.reached_upstream);
    }
}

/// A trap report says where and why: the plugin, the callback, the guest's frames by name (wasmtime's backtrace
/// from the module's name section) and its last log lines, where the Rust SDK logs the panic message.
#[test]
fn a_trap_names_the_plugin_the_callback_the_frames_and_the_last_log_lines() {
    let mut h = probe().build().expect("loads");
    let out = h.run(req("trap-headers")).expect("runs");
    let trap = out.trap.expect("trap message");
    assert!(
        trap.contains("plugin \"probe-plugin\" trapped in proxy_on_request_headers"),
        "{trap}"
    );
    assert!(trap.contains("wasm backtrace"), "{trap}");
    assert!(trap.contains("on_http_request_headers"), "{trap}");
    assert!(trap.contains("the guest's last log lines:"), "{trap}");
    assert!(trap.contains("probe: trap in request headers"), "{trap}");
}

#[test]
fn streams_are_independent_and_context_ids_unique() {
    let mut h = probe().build().expect("loads");
    let a = h.run(req("http-call")).expect("runs");
    let b = h.run(req("http-call")).expect("runs");
    assert_ne!(a.stream.context_id(), b.stream.context_id());
    assert_eq!(h.in_flight().len(), 2);
    let calls = h.pending_http_calls();
    // Answer the second first: only its stream continues.
    h.respond_http_call(calls[1].token, Some(Response::new(200).body("bob")))
        .expect("delivered");
    assert_eq!(h.outcome(a.stream).expect("a").stage, Stage::RequestPaused);
    let b_done = h.outcome(b.stream).expect("b");
    assert_eq!(b_done.stage, Stage::Finished);
    assert_eq!(
        b_done
            .upstream_request
            .as_ref()
            .expect("fwd")
            .headers
            .get_str("x-auth"),
        Some("bob")
    );
    h.respond_http_call(calls[0].token, Some(Response::new(200).body("ann")))
        .expect("delivered");
    assert_eq!(h.outcome(a.stream).expect("a").stage, Stage::Finished);
    assert_eq!(h.instance().live_streams(), 0);
}
