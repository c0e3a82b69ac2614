;; Load failure: declares ABI 0.2.0 but imports proxy_get_log_level, which only 0.2.1 has.
(module
  (import "env" "proxy_get_log_level" (func $level (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_0"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $level (i32.const 0)))
    (i32.const 1))
)
