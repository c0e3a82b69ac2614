"""Build small Proxy-Wasm test plugins from WAT snippets.

``plugin(body)`` wraps ``body`` (WAT functions/exports) with: the ABI marker, a memory, a bump
allocator that grows memory (0 when it cannot), imports for every ``call $proxy_*`` /
``call $wasi_*`` the body makes, and helpers:

- ``(call $st (STATUS))``: log the i32 status as one character ``chr(48 + status)``;
- ``(call $logmem (PTR) (LEN))``: log memory; ``(call $logret)``: log the (ptr, size) pair a
  host call wrote at 32/36 (the conventional return slots ``$RP``=32, ``$RS``=36);
- scratch: 16 (status char), 32/36 return pointer/size, 40 u64 result; data from 1024 up.
"""

from __future__ import annotations

import re

import wasmtime

SIGS: dict[str, tuple[str, str]] = {
    "proxy_log": ("i32 i32 i32", "i32"),
    "proxy_get_log_level": ("i32", "i32"),
    "proxy_get_status": ("i32 i32 i32", "i32"),
    "proxy_get_property": ("i32 i32 i32 i32", "i32"),
    "proxy_set_property": ("i32 i32 i32 i32", "i32"),
    "proxy_send_local_response": ("i32 i32 i32 i32 i32 i32 i32 i32", "i32"),
    "proxy_get_shared_data": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_set_shared_data": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_register_shared_queue": ("i32 i32 i32", "i32"),
    "proxy_resolve_shared_queue": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_dequeue_shared_queue": ("i32 i32 i32", "i32"),
    "proxy_enqueue_shared_queue": ("i32 i32 i32", "i32"),
    "proxy_get_header_map_value": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_add_header_map_value": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_replace_header_map_value": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_remove_header_map_value": ("i32 i32 i32", "i32"),
    "proxy_get_header_map_pairs": ("i32 i32 i32", "i32"),
    "proxy_set_header_map_pairs": ("i32 i32 i32", "i32"),
    "proxy_get_header_map_size": ("i32 i32", "i32"),
    "proxy_get_buffer_status": ("i32 i32 i32", "i32"),
    "proxy_get_buffer_bytes": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_set_buffer_bytes": ("i32 i32 i32 i32 i32", "i32"),
    "proxy_http_call": ("i32 i32 i32 i32 i32 i32 i32 i32 i32 i32", "i32"),
    "proxy_grpc_call": ("i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32", "i32"),
    "proxy_grpc_stream": ("i32 i32 i32 i32 i32 i32 i32 i32 i32", "i32"),
    "proxy_grpc_send": ("i32 i32 i32 i32", "i32"),
    "proxy_grpc_close": ("i32", "i32"),
    "proxy_grpc_cancel": ("i32", "i32"),
    "proxy_set_tick_period_milliseconds": ("i32", "i32"),
    "proxy_get_current_time_nanoseconds": ("i32", "i32"),
    "proxy_define_metric": ("i32 i32 i32 i32", "i32"),
    "proxy_increment_metric": ("i32 i64", "i32"),
    "proxy_record_metric": ("i32 i64", "i32"),
    "proxy_get_metric": ("i32 i32", "i32"),
    "proxy_set_effective_context": ("i32", "i32"),
    "proxy_done": ("", "i32"),
    "proxy_call_foreign_function": ("i32 i32 i32 i32 i32 i32", "i32"),
    "proxy_continue_stream": ("i32", "i32"),
    "proxy_close_stream": ("i32", "i32"),
    "proxy_continue_request": ("", "i32"),
    "proxy_continue_response": ("", "i32"),
    "proxy_get_configuration": ("i32 i32", "i32"),
    "proxy_clear_route_cache": ("", "i32"),
}
WASI_SIGS: dict[str, tuple[str, str]] = {
    "fd_write": ("i32 i32 i32 i32", "i32"),
    "clock_time_get": ("i32 i64 i32", "i32"),
    "random_get": ("i32 i32", "i32"),
    "environ_sizes_get": ("i32 i32", "i32"),
    "environ_get": ("i32 i32", "i32"),
    "args_sizes_get": ("i32 i32", "i32"),
    "proc_exit": ("i32", ""),
    "sched_yield": ("", "i32"),
    "fd_read": ("i32 i32 i32 i32", "i32"),
}

ALLOCATOR = """
  (global $heap (mut i32) (i32.const 65536))
  (func $alloc (param $n i32) (result i32)
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
"""

HELPERS = """
  (func $st (param $s i32)
    (i32.store8 (i32.const 16) (i32.add (i32.const 48) (local.get $s)))
    (drop (call $proxy_log (i32.const 2) (i32.const 16) (i32.const 1))))
  (func $logmem (param $p i32) (param $n i32)
    (drop (call $proxy_log (i32.const 2) (local.get $p) (local.get $n))))
  (func $logret (call $logmem (i32.load (i32.const 32)) (i32.load (i32.const 36))))
"""


def _wat_string(text: str | bytes) -> str:
    raw = text.encode("latin-1") if isinstance(text, str) else text
    return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:02x}" for b in raw)


def plugin(
    body: str,
    *,
    version: str = "0_2_1",
    allocator: str | None = "proxy_on_memory_allocate",
    data: dict[int, str | bytes] | None = None,
    pages: int = 2,
    max_pages: int | None = None,
    wasi_module: str = "wasi_snapshot_preview1",
    extra: str = "",
) -> bytes:
    """Compile a test plugin (see the module docstring)."""
    names = set(re.findall(r"call \$(proxy_\w+)", body)) | {"proxy_log"}
    imports = [
        f'(import "env" "{n}" (func ${n} {_sig(*SIGS[n])}))' for n in sorted(names) if n in SIGS
    ]
    for name in sorted(set(re.findall(r"call \$wasi_(\w+)", body))):
        imports.append(
            f'(import "{wasi_module}" "{name}" (func $wasi_{name} {_sig(*WASI_SIGS[name])}))'
        )
    segments = [f'(data (i32.const {a}) "{_wat_string(t)}")' for a, t in (data or {}).items()]
    marker = f'(func (export "proxy_abi_version_{version}"))' if version else ""
    alloc = f'(export "{allocator}" (func $alloc))' if allocator else ""
    limit = f" {max_pages}" if max_pages is not None else ""
    memory = f'(memory (export "memory") {pages}{limit})'
    parts = ["(module", *imports, extra, memory, *segments, ALLOCATOR, alloc, HELPERS, marker]
    text = "\n".join([*parts, body, ")"])
    return wasmtime.wat2wasm(text)


def _sig(params: str, results: str) -> str:
    out = f"(param {params})" if params else ""
    return out + (f" (result {results})" if results else "")


# A context-create/vm-start prelude most plugins want.
BASIC = """
  (func (export "proxy_on_context_create") (param i32 i32))
"""
