"""validate_module: a real wasmtime compile in a limited worker process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.wasm import code_module, minimal_module, wat_to_wasm
from wasm_agent.fetch.checks import ValidateSettings, validate_module
from wasm_agent.fetch.errors import InvalidModule


def write(tmp_path: Path, data: bytes, name: str = "m.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_valid_module(tmp_path: Path) -> None:
    await validate_module(write(tmp_path, minimal_module()), ValidateSettings())


async def test_malformed_module_first_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"\0asm\x01\0\0\0\x01\x05garbage")
    with pytest.raises(InvalidModule) as caught:
        await validate_module(path, ValidateSettings())
    assert caught.value.cause == (
        "invalid Wasm module: invalid leading byte (0x61) for type (at offset 0xb)"
    )


async def test_type_error_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, wat_to_wasm("(module (func (result i32) (i64.const 1)))"))
    with pytest.raises(InvalidModule, match="type mismatch: expected i32, found i64"):
        await validate_module(path, ValidateSettings())


async def test_time_limit_kills_the_worker(tmp_path: Path) -> None:
    path = write(tmp_path, code_module(2 * 1024 * 1024, seed=3))
    started = time.monotonic()
    with pytest.raises(InvalidModule, match=r"compiling took longer than 0.2s"):
        await validate_module(path, ValidateSettings(time_limit=0.2))
    assert time.monotonic() - started < 2


async def test_memory_limit_is_enforced(tmp_path: Path) -> None:
    path = write(tmp_path, code_module(512 * 1024, seed=5))
    with pytest.raises(InvalidModule, match=r"exceeded the memory limit \(64 MiB\)"):
        await validate_module(path, ValidateSettings(memory_limit=64 * 1024 * 1024))


async def test_compiled_artifact_cache_makes_the_second_compile_cheap(tmp_path: Path) -> None:
    path = write(tmp_path, code_module(1024 * 1024, seed=4))
    settings = ValidateSettings(compiled_cache_dir=tmp_path / "compiled")
    started = time.monotonic()
    await validate_module(path, settings)
    cold = time.monotonic() - started
    started = time.monotonic()
    await validate_module(path, settings)
    warm = time.monotonic() - started
    assert list((tmp_path / "compiled" / "artifacts").rglob("*"))  # artifacts were written
    assert warm < cold  # loose on purpose: figures live in bench/, this shows the cache is used
