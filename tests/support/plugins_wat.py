"""A tiny Proxy-Wasm plugin in WAT (ABI 0.2.1) that adds one response header.

``header_plugin("v1")`` adds ``x-wasm-agent: v1`` to every response; different values give
different modules (distinct sha256) for push/update tests. Loads in real Envoy (v8 runtime).
"""

from __future__ import annotations

from tests.support.wasm import sha256_hex, wat_to_wasm

HEADER = "x-wasm-agent"


def header_plugin_wat(value: str, header: str = HEADER) -> str:
    """The WAT text: response headers get ``header: value``."""
    if not value.isascii() or '"' in value or "\\" in value or len(value) > 200:
        raise ValueError("value must be short plain ASCII")
    return f"""
(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "{header}")
  (data (i32.const 256) "{value}")
  (global $next (mut i32) (i32.const 8192))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next
      (i32.and (i32.add (i32.add (global.get $next) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const {len(header)})
                     (i32.const 256) (i32.const {len(value)})))
    (i32.const 0))
)
"""


def header_plugin(value: str, header: str = HEADER) -> bytes:
    """The plugin binary adding ``header: value``."""
    return wat_to_wasm(header_plugin_wat(value, header))


def header_plugin_sha(value: str) -> str:
    return sha256_hex(header_plugin(value))
