;; The README's example plugin: the behaviour spec in README.md (and examples/tenant/spec.yaml)
;; passes against it. A Proxy-Wasm HTTP filter (ABI 0.2.1) written by hand in WebAssembly text:
;; - configuration: JSON such as {"deny": ["/admin"]}; a request whose :path appears in it as a
;;   quoted string gets a local 403 reply "denied\n" and never reaches the upstream;
;; - a request with an x-tenant header logs "tenant <value>"; tenant "acme" gets
;;   x-tenant-id: 42 added for the upstream; x-debug is always removed;
;; - every request increments the counter requests_total; responses get x-plugin: on.
;; Build: wasm-agent run and check take this .wat file as it is (they compile it first), or
;; python -c "import wasmtime,sys; sys.stdout.buffer.write(wasmtime.wat2wasm(open(sys.argv[1]).read()))" plugin.wat > plugin.wasm
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local_reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))

  (memory (export "memory") 2)
  ;; 32/36: where the host writes a returned (pointer, size); 100: the counter's id;
  ;; 104/108: the configuration (pointer, size); strings from 1024; scratch from 2048.
  (data (i32.const 1024) "requests_total")
  (data (i32.const 1040) ":path")
  (data (i32.const 1048) "x-tenant")
  (data (i32.const 1060) "x-tenant-id")
  (data (i32.const 1072) "42")
  (data (i32.const 1076) "x-debug")
  (data (i32.const 1088) "x-plugin")
  (data (i32.const 1100) "on")
  (data (i32.const 1104) "denied\n")
  (data (i32.const 1112) "tenant ")
  (data (i32.const 1120) "acme")

  (global $heap (mut i32) (i32.const 65536))
  (func $alloc (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32) (local $need i32)
    (local.set $p (global.get $heap))
    (local.set $need (i32.add (local.get $p) (local.get $n)))
    (if (i32.gt_u (local.get $need) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $need)
                 (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))
                 (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $need))
    (local.get $p))

  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $n)))

  ;; 1 if the $n bytes at $a equal those at $b
  (func $equal (param $a i32) (param $b i32) (param $n i32) (result i32)
    (local $i i32)
    (loop $next
      (if (i32.ge_u (local.get $i) (local.get $n)) (then (return (i32.const 1))))
      (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                  (i32.load8_u (i32.add (local.get $b) (local.get $i))))
        (then (return (i32.const 0))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next))
    (i32.const 0))

  ;; 1 if the $nlen bytes at $needle occur in the $hlen bytes at $hay
  (func $contains (param $hay i32) (param $hlen i32) (param $needle i32) (param $nlen i32)
    (result i32)
    (local $at i32)
    (if (i32.gt_u (local.get $nlen) (local.get $hlen)) (then (return (i32.const 0))))
    (loop $next
      (if (call $equal (i32.add (local.get $hay) (local.get $at)) (local.get $needle)
                       (local.get $nlen))
        (then (return (i32.const 1))))
      (local.set $at (i32.add (local.get $at) (i32.const 1)))
      (br_if $next (i32.le_u (i32.add (local.get $at) (local.get $nlen)) (local.get $hlen))))
    (i32.const 0))

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))

  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $define_metric (i32.const 0) (i32.const 1024) (i32.const 14) (i32.const 100)))
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        (if (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
                                       (i32.const 32) (i32.const 36)))
          (then
            (i32.store (i32.const 104) (i32.load (i32.const 32)))
            (i32.store (i32.const 108) (i32.load (i32.const 36)))))))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $len i32)
    (drop (call $increment_metric (i32.load (i32.const 100)) (i64.const 1)))
    ;; denied path: is "\"<path>\"" in the configuration?
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1040) (i32.const 5)
                                   (i32.const 32) (i32.const 36)))
      (then
        (local.set $len (i32.load (i32.const 36)))
        (i32.store8 (i32.const 3072) (i32.const 34))
        (call $copy (i32.const 3073) (i32.load (i32.const 32)) (local.get $len))
        (i32.store8 (i32.add (i32.const 3073) (local.get $len)) (i32.const 34))
        (if (call $contains (i32.load (i32.const 104)) (i32.load (i32.const 108))
                            (i32.const 3072) (i32.add (local.get $len) (i32.const 2)))
          (then
            (drop (call $local_reply (i32.const 403) (i32.const 0) (i32.const 0)
                                     (i32.const 1104) (i32.const 7) (i32.const 0) (i32.const 0)
                                     (i32.const -1)))
            (return (i32.const 1))))))
    ;; the tenant
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1048) (i32.const 8)
                                   (i32.const 32) (i32.const 36)))
      (then
        (local.set $len (i32.load (i32.const 36)))
        (if (i32.gt_u (local.get $len) (i32.const 0))
          (then
            (call $copy (i32.const 2048) (i32.const 1112) (i32.const 7))
            (call $copy (i32.const 2055) (i32.load (i32.const 32)) (local.get $len))
            (drop (call $log (i32.const 2) (i32.const 2048) (i32.add (local.get $len) (i32.const 7))))
            (if (i32.and (i32.eq (local.get $len) (i32.const 4))
                         (call $equal (i32.const 2055) (i32.const 1120) (i32.const 4)))
              (then
                (drop (call $add_header (i32.const 0) (i32.const 1060) (i32.const 11)
                                        (i32.const 1072) (i32.const 2)))))))))
    (drop (call $remove_header (i32.const 0) (i32.const 1076) (i32.const 7)))
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 1088) (i32.const 8) (i32.const 1100)
                            (i32.const 2)))
    (i32.const 0))
)
