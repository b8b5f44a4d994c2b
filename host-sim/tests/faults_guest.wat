;; A proxy-wasm guest that fails on request, for the fault tests (host-sim and real Envoy):
;; the first byte of the request header `x-fault` picks the failure in proxy_on_request_headers:
;;   t  trap (unreachable)                 l  loop forever
;;   g  grow memory until it cannot, then trap (a Rust guest aborts the same way)
;;   r  trap later, in this stream's proxy_on_response_headers
;; Otherwise it adds `x-guest-saw: 1` to the request, so tests see whether the filter ran.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "x-fault")
  (data (i32.const 32) "x-guest-saw")
  (data (i32.const 48) "1")
  ;; Bump allocator over [1024, 128 KiB); reset at each request (values live for one callback).
  (global $bump (mut i32) (i32.const 1024))
  ;; The context whose response headers must trap (0: none).
  (global $trap_response (mut i32) (i32.const 0))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $size i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (if (i32.gt_u (i32.add (local.get $p) (local.get $size)) (i32.const 131072))
      (then (return (i32.const 0))))
    (global.set $bump (i32.add (local.get $p) (local.get $size)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (local $c i32)
    (global.set $bump (i32.const 1024))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 64) (i32.const 68)))
      (then
        (if (i32.gt_u (i32.load (i32.const 68)) (i32.const 0))
          (then
            (local.set $c (i32.load8_u (i32.load (i32.const 64))))
            (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
            (if (i32.eq (local.get $c) (i32.const 108))
              (then (loop $forever (br $forever))))
            (if (i32.eq (local.get $c) (i32.const 103))
              (then
                (block $full
                  (loop $more
                    (br_if $full (i32.eq (memory.grow (i32.const 64)) (i32.const -1)))
                    (br $more)))
                unreachable))
            (if (i32.eq (local.get $c) (i32.const 114))
              (then (global.set $trap_response (local.get $ctx))))))))
    (drop (call $add_header (i32.const 0) (i32.const 32) (i32.const 11) (i32.const 48) (i32.const 1)))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param i32 i32) (result i32)
    (if (i32.eq (local.get $ctx) (global.get $trap_response)) (then unreachable))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
)
