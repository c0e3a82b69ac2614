"""Failure messages for traps, worded like V8's (what Envoy logs), e.g.
"Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"."""

from __future__ import annotations

import wasmtime

# V8's wording for wasm traps (what Envoy logs), keyed by wasmtime trap code.
_V8_TRAPS = {
    "UNREACHABLE": "Uncaught RuntimeError: unreachable",
    "MEMORY_OUT_OF_BOUNDS": "Uncaught RuntimeError: memory access out of bounds",
    "HEAP_MISALIGNED": "Uncaught RuntimeError: operation does not support unaligned accesses",
    "INTEGER_DIVISION_BY_ZERO": "Uncaught RuntimeError: divide by zero",
    "INTEGER_OVERFLOW": "Uncaught RuntimeError: divide result unrepresentable",
    "BAD_CONVERSION_TO_INTEGER": "Uncaught RuntimeError: float unrepresentable in integer range",
    "TABLE_OUT_OF_BOUNDS": "Uncaught RuntimeError: table index is out of bounds",
    # Envoy 1.40's V8 (recorded: a C call through a null function pointer)
    "INDIRECT_CALL_TO_NULL": "Uncaught RuntimeError: function signature mismatch",
    "BAD_SIGNATURE": "Uncaught RuntimeError: function signature mismatch",
    "STACK_OVERFLOW": "Uncaught RangeError: Maximum call stack size exceeded",
    "OUT_OF_FUEL": "all fuel consumed by WebAssembly (runaway plugin stopped)",
    "INTERRUPT": "callback deadline exceeded (runaway plugin stopped)",
}


def trap_message(exc: BaseException) -> str:
    """The failure text: V8's wording for wasm traps, else the exception's first line."""
    if isinstance(exc, wasmtime.Trap) and exc.trap_code is not None:
        name = exc.trap_code.name
        return _V8_TRAPS.get(name, "Uncaught RuntimeError: " + name.lower().replace("_", " "))
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
