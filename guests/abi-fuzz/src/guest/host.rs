//! Raw imports of every hostcall a v0.2.1 module may use in Envoy, pointers as the guest's own 32-bit offsets.

#[link(wasm_import_module = "env")]
extern "C" {
    pub fn proxy_log(level: u32, ptr: u32, len: u32) -> u32;
    pub fn proxy_get_log_level(out: u32) -> u32;
    pub fn proxy_get_current_time_nanoseconds(out: u32) -> u32;
    pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    pub fn proxy_get_buffer_bytes(t: u32, start: u32, max: u32, out_p: u32, out_s: u32) -> u32;
    pub fn proxy_get_buffer_status(t: u32, out_len: u32, out_flags: u32) -> u32;
    pub fn proxy_set_buffer_bytes(t: u32, start: u32, size: u32, p: u32, s: u32) -> u32;
    pub fn proxy_get_header_map_pairs(t: u32, out_p: u32, out_s: u32) -> u32;
    pub fn proxy_set_header_map_pairs(t: u32, p: u32, s: u32) -> u32;
    pub fn proxy_get_header_map_value(t: u32, kp: u32, ks: u32, out_p: u32, out_s: u32) -> u32;
    pub fn proxy_add_header_map_value(t: u32, kp: u32, ks: u32, vp: u32, vs: u32) -> u32;
    pub fn proxy_replace_header_map_value(t: u32, kp: u32, ks: u32, vp: u32, vs: u32) -> u32;
    pub fn proxy_remove_header_map_value(t: u32, kp: u32, ks: u32) -> u32;
    pub fn proxy_get_header_map_size(t: u32, out: u32) -> u32;
    pub fn proxy_get_property(pp: u32, ps: u32, out_p: u32, out_s: u32) -> u32;
    pub fn proxy_set_property(pp: u32, ps: u32, vp: u32, vs: u32) -> u32;
    pub fn proxy_get_shared_data(kp: u32, ks: u32, out_p: u32, out_s: u32, out_cas: u32) -> u32;
    pub fn proxy_set_shared_data(kp: u32, ks: u32, vp: u32, vs: u32, cas: u32) -> u32;
    pub fn proxy_register_shared_queue(np: u32, ns: u32, out: u32) -> u32;
    pub fn proxy_resolve_shared_queue(vp: u32, vs: u32, np: u32, ns: u32, out: u32) -> u32;
    pub fn proxy_dequeue_shared_queue(token: u32, out_p: u32, out_s: u32) -> u32;
    pub fn proxy_enqueue_shared_queue(token: u32, p: u32, s: u32) -> u32;
    pub fn proxy_continue_stream(t: u32) -> u32;
    pub fn proxy_close_stream(t: u32) -> u32;
    pub fn proxy_send_local_response(
        status: u32,
        dp: u32,
        ds: u32,
        bp: u32,
        bs: u32,
        hp: u32,
        hs: u32,
        grpc: i32,
    ) -> u32;
    pub fn proxy_http_call(
        up: u32,
        us: u32,
        hp: u32,
        hs: u32,
        bp: u32,
        bs: u32,
        tp: u32,
        ts: u32,
        timeout: u32,
        out: u32,
    ) -> u32;
    pub fn proxy_grpc_call(
        up: u32,
        us: u32,
        sp: u32,
        ss: u32,
        mp: u32,
        ms: u32,
        ip: u32,
        is: u32,
        rp: u32,
        rs: u32,
        timeout: u32,
        out: u32,
    ) -> u32;
    pub fn proxy_grpc_stream(
        up: u32,
        us: u32,
        sp: u32,
        ss: u32,
        mp: u32,
        ms: u32,
        ip: u32,
        is: u32,
        out: u32,
    ) -> u32;
    pub fn proxy_grpc_send(token: u32, p: u32, s: u32, end: u32) -> u32;
    pub fn proxy_grpc_cancel(token: u32) -> u32;
    pub fn proxy_grpc_close(token: u32) -> u32;
    pub fn proxy_set_effective_context(id: u32) -> u32;
    pub fn proxy_done() -> u32;
    pub fn proxy_call_foreign_function(
        np: u32,
        ns: u32,
        ap: u32,
        as_: u32,
        out_p: u32,
        out_s: u32,
    ) -> u32;
    pub fn proxy_define_metric(t: u32, np: u32, ns: u32, out: u32) -> u32;
    pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    pub fn proxy_get_metric(id: u32, out: u32) -> u32;
    pub fn proxy_get_status(out_code: u32, out_p: u32, out_s: u32) -> u32;
}
