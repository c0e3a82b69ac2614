;; lifecycle: which start functions the host calls. _initialize sets bit 0, main bit 1, _start
;; bit 2 of $g; proxy_on_vm_start logs "lifecycle: started <g>" (Envoy: _initialize, then main
;; if exported, else _start: 3).
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "lifecycle: started ?")
  (global $g (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "_initialize") (global.set $g (i32.or (global.get $g) (i32.const 1))))
  (func (export "main") (param i32 i32) (result i32)
    (global.set $g (i32.or (global.get $g) (i32.const 2)))
    (i32.const 0))
  (func (export "_start") (global.set $g (i32.or (global.get $g) (i32.const 4))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.store8 (i32.const 35) (i32.add (i32.const 48) (global.get $g)))
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 20)))
    (i32.const 1))
)
