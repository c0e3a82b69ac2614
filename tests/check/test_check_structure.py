"""The Wasm section reader and the ``structure`` checks, on WAT, C and AssemblyScript modules."""

from __future__ import annotations

import pytest
import wasmtime

from tests.check.helpers import (
    AS_INDEX,
    C_HEADERS,
    C_TCP,
    built,
    by_id,
    check_bytes,
    proxy_wat,
    wasm,
)
from wasm_agent.check.model import Status
from wasm_agent.check.structure import MalformedModule, parse_module
from wasm_agent.host.abi import type_str


def test_reads_imports_exports_memory_table_and_start() -> None:
    info = parse_module(
        wasm("""(module
          (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
          (import "env" "mem" (memory 1 16))
          (import "env" "g" (global i64))
          (table 3 10 funcref)
          (func $s)
          (func (export "f") (param i64 f32) (result f64) (f64.const 0))
          (export "t" (table 0))
          (start $s))""")
    )
    assert [(i.where, i.kind, i.signature) for i in info.imports] == [
        ("env.proxy_log", "func", "(i32 i32 i32) -> (i32)"),
        ("env.mem", "memory", None),
        ("env.g", "global", None),
    ]
    assert info.memories[0].minimum == 1 and info.memories[0].maximum == 16
    assert info.tables[0].minimum == 3 and info.tables[0].maximum == 10
    exports = info.export_map()
    assert exports["f"].signature == "(i64 f32) -> (f64)"
    assert exports["t"].kind == "table"
    assert info.start == 1  # imported function 0, then $s
    assert info.function_count == 3


@pytest.mark.parametrize("name", [C_HEADERS, C_TCP, AS_INDEX])
def test_reader_agrees_with_wasmtime_on_real_plugins(name: str) -> None:
    data = built(name)
    info = parse_module(data)
    module = wasmtime.Module(wasmtime.Engine(), data)

    def sig(ty: object) -> str | None:
        if isinstance(ty, wasmtime.FuncType):
            return f"{type_str(ty.params)} -> {type_str(ty.results)}"
        return None

    assert [(i.module, i.name, i.signature) for i in info.imports] == [
        (i.module, i.name, sig(i.type)) for i in module.imports
    ]
    assert [(e.name, e.signature) for e in info.exports] == [
        (e.name, sig(e.type)) for e in module.exports
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\0asm\x02\0\0\0", "unsupported Wasm binary version"),
        (b"\0asm\x01\0\0\0\x01\x05\x01\x60", "runs past the end"),
        (b"\0asm\x01\0\0\0\x01\x02\x01\x60", "unexpected end of section"),
        (b"\0asm\x01\0\0\0\x02\x04\x01\x01\xff\x00", "not UTF-8"),
        (b"\0asm\x01\0\0\0\x01\x06\xff\xff\xff\xff\xff\x0f", "integer too large"),
        (b"GIF89a", "no \\0asm magic"),
    ],
)
def test_malformed_bytes_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(MalformedModule, match=message.replace("\\", "\\\\")):
        parse_module(data)


def test_structure_checks_on_a_wat_plugin() -> None:
    report = check_bytes(wasm(proxy_wat('(func (export "_initialize"))')))
    checks = by_id(report)
    fmt = checks["structure.format"]
    assert fmt.status is Status.PASS and report.sha256 in fmt.message
    assert checks["structure.compile"].status is Status.PASS
    assert "wasmtime" in checks["structure.compile"].message
    assert checks["structure.compile"].duration_ms is not None
    assert "min 2 pages (128 KiB), no max; exported as memory" in checks["structure.memory"].message
    assert checks["structure.table"].message == "no table"
    assert checks["structure.start"].message == "reactor: _initialize"


@pytest.mark.parametrize(
    ("name", "start", "memory"),
    [
        (C_HEADERS, "reactor: _initialize", "exported as memory"),
        (AS_INDEX, "start section (function", "exported as memory"),
    ],
)
def test_structure_checks_on_c_and_assemblyscript(name: str, start: str, memory: str) -> None:
    checks = by_id(check_bytes(built(name), b"{}", root_id="as_headers"))
    assert all(checks[f"structure.{n}"].status is Status.PASS for n in ("format", "compile"))
    assert checks["structure.start"].message.startswith(start)
    assert memory in checks["structure.memory"].message


def test_not_wasm_fails_format_and_stops() -> None:
    report = check_bytes(b"#!/bin/sh\necho not wasm\n")
    assert [c.id for c in report.checks] == ["structure.format"]
    assert "Failed to parse corrupted Wasm module" in report.checks[0].message
    assert not report.passed


def test_invalid_code_fails_compile_and_skips_the_load_test() -> None:
    # a well-formed section layout whose function body does not validate (i32.add on nothing)
    data = bytearray(wasm('(module (func (export "f") (result i32) (i32.const 1)))'))
    data[data.rindex(b"\x41\x01\x0b") : data.rindex(b"\x41\x01\x0b") + 2] = b"\x6a\x01"
    report = check_bytes(bytes(data))
    checks = by_id(report)
    assert checks["structure.format"].status is Status.PASS  # the sections read fine
    assert checks["structure.compile"].status is Status.FAIL
    assert "wasmtime cannot compile it" in checks["structure.compile"].message
    assert checks["load.instantiate"].status is Status.SKIP


def test_module_without_memory_warns() -> None:
    report = check_bytes(wasm('(module (func (export "proxy_abi_version_0_2_1")))'))
    assert by_id(report)["structure.memory"].status is Status.WARN
