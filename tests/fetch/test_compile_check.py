"""The sanity compile without optimisation passes refuses exactly what wasmtime's default
compile refuses, with the same message, and accepts what it accepts.

Every invalid module the test suite feeds to the compile gate (and the structural failures
``check`` tests, plus a few more validation errors) goes through the real worker twice: with
the shipped configuration (Cranelift ``opt_level = "none"``) and with wasmtime's default
(``speed``), the configuration the gate used before.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.wasm import code_module, minimal_module, wat_to_wasm
from wasm_agent.demo.resources import plugin_wasm
from wasm_agent.fetch.checks import ValidateSettings, validate_module
from wasm_agent.fetch.errors import InvalidModule

HEADER = b"\0asm\x01\0\0\0"

INVALID: dict[str, bytes] = {
    # tests/fetch/test_validate.py, tests/cache/test_module_cache.py
    "malformed": HEADER + b"\x01\x05garbage",
    "type-mismatch": wat_to_wasm("(module (func (result i32) (i64.const 1)))"),
    # tests/check/test_check_structure.py (the structural failures `check` reports)
    "version-2": b"\0asm\x02\0\0\0",
    "section-past-end": HEADER + b"\x01\x05\x01\x60",
    "unexpected-end": HEADER + b"\x01\x02\x01\x60",
    "name-not-utf8": HEADER + b"\x02\x04\x01\x01\xff\x00",
    "integer-too-large": HEADER + b"\x01\x06\xff\xff\xff\xff\xff\x0f",
    # more validation errors
    "truncated-code": code_module(64 * 1024, seed=9)[:40_000],
    "unknown-function": wat_to_wasm("(module (func (call 7)))"),
    "start-with-params": wat_to_wasm("(module (func $f (param i32)) (start $f))"),
    "duplicate-export": wat_to_wasm(
        '(module (func $f) (export "a" (func $f)) (export "a" (func $f)))'
    ),
    "memory-too-large": wat_to_wasm("(module (memory 70000))"),
    "immutable-global-set": wat_to_wasm(
        "(module (global i32 (i32.const 0)) (func (global.set 0 (i32.const 1))))"
    ),
    "unknown-local": wat_to_wasm("(module (func (drop (local.get 3))))"),
}

VALID: dict[str, bytes] = {
    "minimal": minimal_module(),
    "demo-plugin": plugin_wasm(),
    "code-256k": code_module(256 * 1024, seed=11),
    # features Cranelift compiles and wasmtime's baseline compiler (Winch) refuses
    "simd": wat_to_wasm(
        "(module (func (param v128 v128) (result v128) (i32x4.add (local.get 0) (local.get 1))))"
    ),
    "relaxed-simd": wat_to_wasm(
        "(module (func (param v128 v128 v128) (result v128)"
        " (f32x4.relaxed_madd (local.get 0) (local.get 1) (local.get 2))))"
    ),
    "tail-call": wat_to_wasm("(module (func $f (return_call $f)))"),
    "threads": wat_to_wasm(
        "(module (memory 1 1 shared) (func (result i32) (i32.atomic.load (i32.const 0))))"
    ),
    "exceptions": wat_to_wasm("(module (tag $t) (func (throw $t)))"),
}


async def _outcome(path: Path, opt_level: str, memory_limit: int | None = None) -> str:
    settings = ValidateSettings(opt_level=opt_level)
    if memory_limit is not None:
        settings = ValidateSettings(opt_level=opt_level, memory_limit=memory_limit)
    try:
        await validate_module(path, settings)
    except InvalidModule as error:
        return error.cause
    return "accepted"


async def _both(path: Path, memory_limit: int | None = None) -> tuple[str, str]:
    shipped, default = await asyncio.gather(
        _outcome(path, ValidateSettings().opt_level, memory_limit),
        _outcome(path, "speed", memory_limit),
    )
    return shipped, default


def test_the_gate_compiles_without_optimisation() -> None:
    assert ValidateSettings().opt_level == "none"
    with pytest.raises(ValueError, match="opt_level must be one of none, speed"):
        ValidateSettings(opt_level="fast")


@pytest.mark.parametrize("name", sorted(INVALID))
async def test_invalid_module_refused_with_the_same_message(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(INVALID[name])
    shipped, default = await _both(path)
    assert shipped != "accepted", name
    assert shipped.startswith(("invalid Wasm module: ", "wasmtime cannot compile the module: "))
    assert shipped == default


@pytest.mark.parametrize("name", sorted(VALID))
async def test_valid_module_accepted_by_both(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(VALID[name])
    assert await _both(path) == ("accepted", "accepted")


async def test_memory_limit_refuses_under_both(tmp_path: Path) -> None:
    """tests/fetch/test_validate.py's over-the-limit compile, under both configurations."""
    path = tmp_path / "big.wasm"
    path.write_bytes(code_module(512 * 1024, seed=5))
    shipped, default = await _both(path, memory_limit=64 * 1024 * 1024)
    assert "exceeded the memory limit (64 MiB)" in shipped
    assert shipped == default
