//! The report's sections: header maps, bodies, properties, header mutations, metrics, shared data, queues and
//! foreign functions, each read (or changed) with raw hostcalls and written as JSON.

use super::*;

pub(super) fn write_pairs(json: &mut Json, map: u32) {
    let (status, bytes) = get_pairs(map);
    match bytes.as_deref().and_then(decode_pairs) {
        Some(pairs) if status == 0 => json.pairs(&pairs),
        _ => {
            json.raw("{\"status\":");
            json.string(&status_name(status));
            json.raw("}");
        }
    }
}

pub(super) fn write_body(json: &mut Json, kind: u32, size: usize, eos: bool, headers_eos: bool) {
    json.raw("{\"size\":");
    json.raw(&size.to_string());
    json.raw(",\"end_of_stream\":");
    json.raw(if eos { "true" } else { "false" });
    json.raw(",\"headers_end_of_stream\":");
    json.raw(if headers_eos { "true" } else { "false" });
    json.raw(",\"reads\":[");
    for (i, (start, max)) in reads(size).into_iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.raw(&format!("{{\"start\":{start},\"max\":{max},\"read\":"));
        json.result(get_buffer(kind, start, max));
        json.raw("}");
    }
    json.raw("]}");
}

pub(super) fn write_properties(json: &mut Json) {
    json.raw("{");
    let mut first = true;
    for path in PROPERTIES {
        json.key(&mut first, path);
        json.result(get_property(path));
    }
    json.raw("}");
}

pub(super) fn write_mutations(json: &mut Json) {
    let call = |f: &dyn Fn() -> u32| status_name(f());
    let add = |k: &str, v: &str| {
        // SAFETY: key and value live across the call.
        call(&|| unsafe {
            proxy_add_header_map_value(REQUEST_HEADERS, k.as_ptr(), k.len(), v.as_ptr(), v.len())
        })
    };
    let replace = |k: &str, v: &str| {
        // SAFETY: key and value live across the call.
        call(&|| unsafe {
            proxy_replace_header_map_value(
                REQUEST_HEADERS,
                k.as_ptr(),
                k.len(),
                v.as_ptr(),
                v.len(),
            )
        })
    };
    let remove = |k: &str| {
        // SAFETY: the key lives across the call.
        call(&|| unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, k.as_ptr(), k.len()) })
    };
    let steps = [
        ("add x-added=1", add("x-added", "1")),
        ("add x-added=2", add("x-added", "2")),
        ("add X-Upper=u", add("X-Upper", "u")),
        ("replace x-dup=only", replace("x-dup", "only")),
        ("replace x-new=n", replace("x-new", "n")),
        ("remove x-remove", remove("x-remove")),
        ("remove x-absent", remove("x-absent")),
        ("replace :path=/rewritten", replace(":path", "/rewritten")),
    ];
    json.raw("{\"steps\":{");
    let mut first = true;
    for (step, status) in steps {
        json.key(&mut first, step);
        json.string(&status);
    }
    json.raw("},\"after\":");
    write_pairs(json, REQUEST_HEADERS);
    json.raw("}");
}

pub(super) fn metric(kind: u32, name: &str) -> (u32, u32) {
    let mut id = 0u32;
    // SAFETY: the name lives across the call; the out-pointer is a valid local.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status, id)
}

pub(super) fn metric_value(id: u32) -> String {
    let mut value = 0u64;
    // SAFETY: the out-pointer is a valid local.
    let status = unsafe { proxy_get_metric(id, &mut value) };
    if status == 0 {
        value.to_string()
    } else {
        status_name(status)
    }
}

pub(super) fn write_metrics(json: &mut Json, tag: &str) {
    let (c_status, counter) = metric(0, &format!("probe.{tag}.counter"));
    let (g_status, gauge) = metric(1, &format!("probe.{tag}.gauge"));
    let (h_status, histogram) = metric(2, &format!("probe.{tag}.histogram"));
    let (again_status, again) = metric(0, &format!("probe.{tag}.counter"));
    let (bad_status, _) = metric(7, &format!("probe.{tag}.bad"));
    // SAFETY (all below): plain integer arguments.
    let inc = |id: u32, by: i64| status_name(unsafe { proxy_increment_metric(id, by) });
    let rec = |id: u32, v: u64| status_name(unsafe { proxy_record_metric(id, v) });
    let steps = [
        ("counter +3", inc(counter, 3)),
        ("counter +2", inc(counter, 2)),
        ("counter -1", inc(counter, -1)),
        ("counter record 10", rec(counter, 10)),
        ("gauge +5", inc(gauge, 5)),
        ("gauge -7", inc(gauge, -7)),
        ("gauge record 42", rec(gauge, 42)),
        ("gauge -2", inc(gauge, -2)),
        ("histogram record 7", rec(histogram, 7)),
        ("histogram +1", inc(histogram, 1)),
        ("unknown id +1", inc(u32::MAX - 7, 1)),
    ];
    json.raw("{\"define\":{");
    let mut first = true;
    for (what, status) in [
        ("counter", c_status),
        ("gauge", g_status),
        ("histogram", h_status),
        ("counter again", again_status),
        ("type 7", bad_status),
    ] {
        json.key(&mut first, what);
        json.string(&status_name(status));
    }
    json.raw(&format!(
        "}},\"same_id_when_defined_again\":{},\"steps\":{{",
        counter == again
    ));
    let mut first = true;
    for (step, status) in steps {
        json.key(&mut first, step);
        json.string(&status);
    }
    json.raw("},\"values\":{");
    let mut first = true;
    for (what, id) in [
        ("counter", counter),
        ("gauge", gauge),
        ("histogram", histogram),
        ("unknown id", u32::MAX - 7),
    ] {
        json.key(&mut first, what);
        json.string(&metric_value(id));
    }
    json.raw("}}");
}

pub(super) fn shared_get(key: &str) -> (u32, Option<Vec<u8>>, u32) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the key lives across the call; out-pointers are valid locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    let bytes = (!data.is_null()).then(|| owned(data, size));
    (status, bytes, cas)
}

pub(super) fn shared_set(key: &str, value: &[u8], cas: u32) -> String {
    // SAFETY: key and value live across the call.
    status_name(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub(super) fn write_shared(json: &mut Json, tag: &str) {
    let key = format!("probe.{tag}.key");
    let (missing_status, missing_value, missing_cas) = shared_get(&key);
    let set_new = shared_set(&key, b"v1", 0);
    let (s1, v1, cas1) = shared_get(&key);
    let stale = shared_set(&key, b"stale", cas1.wrapping_add(1));
    let right = shared_set(&key, b"v2", cas1);
    let (s2, v2, cas2) = shared_get(&key);
    let old = shared_set(&key, b"v3", cas1);
    let unconditional = shared_set(&key, b"v4", 0);
    let (s3, v3, cas3) = shared_get(&key);
    let empty_value = shared_set(&format!("probe.{tag}.empty"), b"", 0);
    let (s4, v4, _) = shared_get(&format!("probe.{tag}.empty"));
    json.raw("{\"missing\":");
    json.result((missing_status, missing_value));
    json.raw(&format!(",\"missing_cas_is_zero\":{}", missing_cas == 0));
    json.raw(",\"set_new_with_cas_0\":");
    json.string(&set_new);
    json.raw(",\"after_set\":");
    json.result((s1, v1));
    json.raw(&format!(",\"cas_after_set_is_nonzero\":{}", cas1 != 0));
    json.raw(",\"set_with_wrong_cas\":");
    json.string(&stale);
    json.raw(",\"set_with_right_cas\":");
    json.string(&right);
    json.raw(",\"after_cas_set\":");
    json.result((s2, v2));
    json.raw(&format!(",\"cas_changed\":{}", cas2 != cas1));
    json.raw(",\"set_with_old_cas\":");
    json.string(&old);
    json.raw(",\"set_with_cas_0_again\":");
    json.string(&unconditional);
    json.raw(",\"final\":");
    json.result((s3, v3));
    json.raw(&format!(",\"cas_changed_again\":{}", cas3 != cas2));
    json.raw(",\"set_empty_value\":");
    json.string(&empty_value);
    json.raw(",\"empty_value\":");
    json.result((s4, v4));
    json.raw("}");
}

pub(super) fn write_queue(json: &mut Json, tag: &str) {
    let name = format!("probe.{tag}.queue");
    let mut id = 0u32;
    // SAFETY (queue calls below): names and values live across the calls; out-pointers are
    // valid locals.
    let registered = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
    let mut again = 0u32;
    let registered_again =
        unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut again) };
    let vm = get_property("plugin_vm_id").1.unwrap_or_default();
    let mut resolved = 0u32;
    let resolve = unsafe {
        proxy_resolve_shared_queue(
            vm.as_ptr(),
            vm.len(),
            name.as_ptr(),
            name.len(),
            &mut resolved,
        )
    };
    let unknown_name = format!("probe.{tag}.nope");
    let mut nothing = 0u32;
    let resolve_unknown = unsafe {
        proxy_resolve_shared_queue(
            vm.as_ptr(),
            vm.len(),
            unknown_name.as_ptr(),
            unknown_name.len(),
            &mut nothing,
        )
    };
    let other_vm = b"no-such-vm";
    let resolve_other_vm = unsafe {
        proxy_resolve_shared_queue(
            other_vm.as_ptr(),
            other_vm.len(),
            name.as_ptr(),
            name.len(),
            &mut nothing,
        )
    };
    let enqueue = |q: u32, v: &[u8]| {
        status_name(unsafe { proxy_enqueue_shared_queue(q, v.as_ptr(), v.len()) })
    };
    let dequeue = |q: u32| with_buffer(|d, s| unsafe { proxy_dequeue_shared_queue(q, d, s) });
    let e1 = enqueue(id, b"first");
    let e2 = enqueue(id, b"second");
    let e3 = enqueue(id, b"");
    let d1 = dequeue(id);
    let d2 = dequeue(id);
    let d3 = dequeue(id);
    let d4 = dequeue(id);
    let bad_enqueue = enqueue(u32::MAX - 3, b"x");
    let bad_dequeue = dequeue(u32::MAX - 3);
    json.raw("{\"register\":");
    json.string(&status_name(registered));
    json.raw(",\"register_again\":");
    json.string(&status_name(registered_again));
    json.raw(&format!(",\"register_again_same_id\":{}", id == again));
    json.raw(",\"resolve\":");
    json.string(&status_name(resolve));
    json.raw(&format!(",\"resolve_same_id\":{}", resolved == id));
    json.raw(",\"resolve_unknown_name\":");
    json.string(&status_name(resolve_unknown));
    json.raw(",\"resolve_other_vm\":");
    json.string(&status_name(resolve_other_vm));
    json.raw(",\"enqueue\":[");
    json.string(&e1);
    json.raw(",");
    json.string(&e2);
    json.raw(",");
    json.string(&e3);
    json.raw("],\"dequeue\":[");
    for (i, d) in [d1, d2, d3, d4].into_iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.result(d);
    }
    json.raw("],\"enqueue_unknown_id\":");
    json.string(&bad_enqueue);
    json.raw(",\"dequeue_unknown_id\":");
    json.result(bad_dequeue);
    json.raw("}");
}

pub(super) fn foreign(name: &str, args: &[u8]) -> (u32, Option<Vec<u8>>) {
    // SAFETY: name and arguments live across the call; out-pointers are valid locals.
    with_buffer(|d, s| unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), d, s)
    })
}

pub(super) fn write_foreign(json: &mut Json) {
    json.raw("{");
    let mut first = true;
    for (what, name, args) in [
        ("clear_route_cache", "clear_route_cache", &b""[..]),
        (
            "clear_route_cache with arguments",
            "clear_route_cache",
            &b"x"[..],
        ),
        (
            "set_envoy_filter_state without arguments",
            "set_envoy_filter_state",
            &b""[..],
        ),
        (
            "set_envoy_filter_state with garbage",
            "set_envoy_filter_state",
            &b"\x01\x02garbage"[..],
        ),
        ("unknown function", "no_such_function", &b"x"[..]),
        ("empty name", "", &b""[..]),
    ] {
        json.key(&mut first, what);
        json.result(foreign(name, args));
    }
    json.raw("}");
}
