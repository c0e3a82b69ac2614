;; Load failure: imports a host function no ABI version has.
(module
  (import "env" "proxy_does_not_exist" (func $nope (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $nope (i32.const 0)))
    (i32.const 1))
)
