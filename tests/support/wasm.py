"""Test modules built from WAT with wasmtime (no binaries are committed)."""

from __future__ import annotations

import hashlib

import wasmtime

MINIMAL_WAT = '(module (func (export "_start")))'


def wat_to_wasm(wat: str) -> bytes:
    """Compile WAT text to a Wasm binary."""
    return wasmtime.wat2wasm(wat)


def minimal_module() -> bytes:
    """The smallest valid module used by fetch/cache tests."""
    return wat_to_wasm(MINIMAL_WAT)


def padded_module(size: int, seed: int = 0) -> bytes:
    """A valid module of about ``size`` bytes: a passive data segment of pseudo-random bytes.

    Random (not repeated) content keeps compression and deduplication from flattering
    benchmarks; ``seed`` makes distinct modules of the same size.
    """
    head = wat_to_wasm(f'(module (memory 1) (data "seed-{seed}") (func (export "_start")))')
    filler = bytearray()
    block = hashlib.sha256(f"seed-{seed}".encode()).digest()
    while len(filler) < max(0, size - len(head) - 16):
        block = hashlib.sha256(block).digest()
        filler += block
    payload = bytes(filler[: max(0, size - len(head) - 16)])
    escaped = "".join(f"\\{b:02x}" for b in payload)
    pages = size // 65536 + 1
    return wat_to_wasm(
        f'(module (memory {pages}) (data (i32.const 0) "{escaped}") (func (export "_start")))'
    )


def code_module(size: int, seed: int = 0) -> bytes:
    """A valid module of about ``size`` bytes that is mostly code, so compiling it costs what
    compiling a real plugin of that size costs (data segments compile almost for free)."""
    body = " ".join(
        f"(local.set 0 (i32.add (i32.mul (local.get 0) (i32.const {seed * 7919 + k}))"
        f" (i32.const {k})))"
        for k in range(40)
    )
    func = f"(func (param i32) (result i32) {body} (local.get 0))"
    one = len(wat_to_wasm(f"(module {func})"))
    count = max(1, size // max(1, one - 8))
    funcs = " ".join(func for _ in range(count))
    return wat_to_wasm(f'(module {funcs} (func (export "_start")))')


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
