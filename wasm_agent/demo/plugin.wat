;; The demo's sample Proxy-Wasm plugin (ABI 0.2.1), in WebAssembly text.
;;
;; It adds the response header "x-wasm-agent-demo: hello" to every HTTP response.
;; `wasm-agent demo` compiles this file with wasmtime.wat2wasm and serves the binary from its
;; module server; the control plane names it by URL and sha256, and wasm-agent fetches it.
(module
  ;; proxy_add_header_map_value(map_type, key_ptr, key_len, value_ptr, value_len) -> status
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (data (i32.const 16) "x-wasm-agent-demo")   ;; 17 bytes
  (data (i32.const 64) "hello")               ;; 5 bytes

  ;; a bump allocator: the host asks for memory to copy configuration and buffers into
  (global $next (mut i32) (i32.const 8192))

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next
      (i32.and
        (i32.add (i32.add (global.get $next) (local.get $size)) (i32.const 7))
        (i32.const -8)))
    (local.get $ptr))

  (func (export "proxy_on_context_create") (param $context i32) (param $parent i32))
  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))

  ;; map type 2 = HTTP response headers; return 0 = Continue
  (func (export "proxy_on_response_headers")
    (param $context i32) (param $headers i32) (param $end_of_stream i32) (result i32)
    (drop (call $add_header
      (i32.const 2) (i32.const 16) (i32.const 17) (i32.const 64) (i32.const 5)))
    (i32.const 0))
)
