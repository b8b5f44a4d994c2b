// A small, deterministic proxy-wasm HTTP filter written against @solo-io/proxy-runtime 0.1.8
// (ABI 0.2.0), in the SDK's own style (RootContext/Context classes, registerRootContext,
// stream_context). It exists to compare Envoy 1.40 and host-sim on a third-party SDK's module.
//
// Behaviour (root_id "as_filter"; plugin configuration: any string, echoed back):
//   on_vm_start / on_configure   log at info; on_configure defines counter `as_filter_requests`
//                                and sets a 20 ms tick.
//   tick                         raises shared datum `as_ticks` by one (CAS) until it is 3,
//                                then stops its own tick (period 0).
//   GET /local                   local reply 418 "local reply from assemblyscript\n",
//                                header x-as-local: yes.
//   GET /call                    http call to cluster `echo` (GET /from-wasm); the answer's
//                                :status is copied into a local reply 200
//                                "echo answered <status>\n", header x-as-call-status.
//   POST /reqbody                request body replaced by "replaced request body\n".
//   GET /respbody                response body replaced by "replaced response body\n".
//   anything else                request: add x-as-added: 1, replace x-as-replace: replaced,
//                                remove x-as-remove; response: add x-as-config (the
//                                configuration), x-as-saw-in (request x-as-in), x-as-path,
//                                x-as-ticks (shared datum), replace x-upstream-replace,
//                                remove x-upstream-remove.
// Every stream increments the counter once.
//
// The SDK 0.1.8 has no wrapper for proxy_set_buffer_bytes (its `proxy_set_buffer_status`
// declaration is bound to proxy_get_buffer_status) and its shared-data wrappers pass wrong
// pointers, so those three hostcalls are used through raw declarations below.

export * from "@solo-io/proxy-runtime/proxy"; // the ABI exports (proxy_on_*, malloc)
import {
  RootContext, Context, BaseContext, registerRootContext,
  FilterHeadersStatusValues, FilterDataStatusValues, GrpcStatusValues, WasmResultValues,
  LogLevelValues, log, stream_context, send_local_response, Counter, HeaderPair, Headers,
} from "@solo-io/proxy-runtime";
import { set_tick_period_milliseconds, BufferTypeValues } from "@solo-io/proxy-runtime/runtime";
import { proxy_get_shared_data, proxy_set_shared_data } from "@solo-io/proxy-runtime/imports";
import { free } from "@solo-io/proxy-runtime/malloc";

// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(typ: i32, start: u32, length: u32, data: usize, size: usize): u32;

const TICKS_KEY = "as_ticks";
const TICKS_MAX: u32 = 3;

function setBody(typ: BufferTypeValues, length: usize, body: string): void {
  const data = String.UTF8.encode(body);
  // Replace bytes [0, length), i.e. the whole buffered body.
  const result = proxy_set_buffer_bytes(typ, 0, <u32>length, changetype<usize>(data), data.byteLength);
  if (result != WasmResultValues.Ok) {
    log(LogLevelValues.warn, "set_buffer_bytes(" + typ.toString() + ") failed: " + result.toString());
  }
}

class SharedValue {
  result: u32 = 0;
  value: string = "";
  cas: u32 = 0;
}

function getShared(key: string): SharedValue {
  const key_buf = String.UTF8.encode(key);
  const out = new ArrayBuffer(12); // value_ptr, value_size, cas
  const out_ptr = changetype<usize>(out);
  const r = new SharedValue();
  r.result = proxy_get_shared_data(changetype<usize>(key_buf), key_buf.byteLength, out_ptr, out_ptr + 4, out_ptr + 8);
  if (r.result == WasmResultValues.Ok) {
    const ptr = load<usize>(out_ptr);
    const size = load<usize>(out_ptr + 4);
    r.cas = load<u32>(out_ptr + 8);
    if (ptr != 0) {
      r.value = String.UTF8.decodeUnsafe(ptr, size);
      free(ptr); // the host allocated it with our malloc
    }
  }
  return r;
}

function setShared(key: string, value: string, cas: u32): u32 {
  const key_buf = String.UTF8.encode(key);
  const value_buf = String.UTF8.encode(value);
  return proxy_set_shared_data(changetype<usize>(key_buf), key_buf.byteLength,
    changetype<usize>(value_buf), value_buf.byteLength, cas);
}

function header(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

class AsFilterRoot extends RootContext {
  requests: Counter | null = null;
  ticking: bool = false;

  createContext(context_id: u32): Context {
    return new AsFilter(context_id, this);
  }

  onStart(vm_configuration_size: usize): bool {
    log(LogLevelValues.info, "as_filter: on_vm_start (vm configuration " + vm_configuration_size.toString() + " bytes)");
    return true;
  }

  onConfigure(configuration_size: u32): bool {
    if (!super.onConfigure(configuration_size)) {
      return false;
    }
    log(LogLevelValues.info, "as_filter: on_configure configuration=\"" + this.getConfiguration() + "\"");
    this.requests = new Counter("as_filter_requests");
    set_tick_period_milliseconds(20);
    this.ticking = true;
    return true;
  }

  onTick(): void {
    if (!this.ticking) {
      return;
    }
    const current = getShared(TICKS_KEY);
    let n: u32 = 0;
    if (current.result == WasmResultValues.Ok) {
      n = <u32>I32.parseInt(current.value);
    }
    if (n >= TICKS_MAX) {
      set_tick_period_milliseconds(0);
      this.ticking = false;
      log(LogLevelValues.info, "as_filter: tick stops, as_ticks=" + n.toString());
      return;
    }
    const result = setShared(TICKS_KEY, (n + 1).toString(), current.cas);
    if (result == WasmResultValues.Ok) {
      log(LogLevelValues.info, "as_filter: tick as_ticks " + n.toString() + " -> " + (n + 1).toString());
    } else {
      log(LogLevelValues.info, "as_filter: tick lost a race (" + result.toString() + ")");
    }
  }
}

class AsFilter extends Context {
  path: string = "";
  saw_in: string = "";

  constructor(context_id: u32, root_context: AsFilterRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root_context as AsFilterRoot;
    const requests = root.requests;
    if (requests !== null) {
      requests.increment(1);
    }
    this.path = stream_context.headers.request.get(":path");
    log(LogLevelValues.info, "as_filter: request " + stream_context.headers.request.get(":method") + " " + this.path);

    if (this.path == "/local") {
      const extra: Headers = [header("x-as-local", "yes")];
      send_local_response(418, "as_filter_local", String.UTF8.encode("local reply from assemblyscript\n"),
        extra, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }

    if (this.path == "/call") {
      const call_headers: Headers = [
        header(":method", "GET"), header(":path", "/from-wasm"), header(":authority", "echo"),
        header("x-as-call", "1"),
      ];
      const result = this.root_context.httpCall("echo", call_headers, new ArrayBuffer(0), [], 2000, this,
        (origin_context: BaseContext, headers: u32, body_size: usize, trailers: u32): void => {
          let status = "none";
          if (headers != 0) {
            status = stream_context.headers.http_callback.get(":status");
          }
          log(LogLevelValues.info, "as_filter: echo answered " + status + " (" + body_size.toString() + " body bytes)");
          const extra: Headers = [header("x-as-call-status", status)];
          send_local_response(200, "as_filter_call", String.UTF8.encode("echo answered " + status + "\n"),
            extra, GrpcStatusValues.InvalidCode);
        });
      if (result != WasmResultValues.Ok) {
        log(LogLevelValues.warn, "as_filter: http call failed: " + result.toString());
        send_local_response(500, "as_filter_call_failed", String.UTF8.encode("http call failed\n"), [],
          GrpcStatusValues.InvalidCode);
      }
      return FilterHeadersStatusValues.StopIteration;
    }

    if (this.path == "/reqbody") {
      // The body changes length: let it go upstream chunked.
      stream_context.headers.request.remove("content-length");
      return FilterHeadersStatusValues.Continue;
    }

    this.saw_in = stream_context.headers.request.get("x-as-in");
    stream_context.headers.request.add("x-as-added", "1");
    stream_context.headers.request.replace("x-as-replace", "replaced");
    stream_context.headers.request.remove("x-as-remove");
    return FilterHeadersStatusValues.Continue;
  }

  onRequestBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    if (this.path != "/reqbody") {
      return FilterDataStatusValues.Continue;
    }
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    setBody(BufferTypeValues.HttpRequestBody, body_buffer_length, "replaced request body\n");
    return FilterDataStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (this.path == "/respbody") {
      stream_context.headers.response.remove("content-length");
      return FilterHeadersStatusValues.Continue;
    }
    if (this.path == "/reqbody") {
      return FilterHeadersStatusValues.Continue;
    }
    const ticks = getShared(TICKS_KEY);
    stream_context.headers.response.add("x-as-config", this.root_context.getConfiguration());
    stream_context.headers.response.add("x-as-saw-in", this.saw_in);
    stream_context.headers.response.add("x-as-path", this.path);
    stream_context.headers.response.add("x-as-ticks", ticks.result == WasmResultValues.Ok ? ticks.value : "none");
    stream_context.headers.response.replace("x-upstream-replace", "replaced");
    stream_context.headers.response.remove("x-upstream-remove");
    return FilterHeadersStatusValues.Continue;
  }

  onResponseBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    if (this.path != "/respbody") {
      return FilterDataStatusValues.Continue;
    }
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    setBody(BufferTypeValues.HttpResponseBody, body_buffer_length, "replaced response body\n");
    return FilterDataStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new AsFilterRoot(context_id); }, "as_filter");
