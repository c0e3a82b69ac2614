"""Proxy-Wasm compatibility with Envoy: ABI version, allocator, imports, callbacks."""

from __future__ import annotations

import pytest

from tests.check.helpers import (
    AS_INDEX,
    C_BODY,
    C_HEADERS,
    C_TCP,
    built,
    by_id,
    check_bytes,
    proxy_wat,
    wasm,
)
from wasm_agent.check.compat import check_compat
from wasm_agent.check.model import Status
from wasm_agent.check.runner import Options
from wasm_agent.check.structure import parse_module
from wasm_agent.host.abi import AbiVersion

HTTP = '(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))'
TCP = '(func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))'


def compat(wat: str, envoy_abi: AbiVersion = AbiVersion.V0_2_1):
    result = check_compat(parse_module(wasm(wat)), envoy_abi)
    return result, {c.name: c for c in result.checks}


def test_a_good_plugin_passes_every_compat_check() -> None:
    imports = '(import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))'
    result, checks = compat(proxy_wat(HTTP, imports=imports))
    assert {n: c.status for n, c in checks.items()} == {
        "abi_version": Status.PASS,
        "allocator": Status.PASS,
        "imports": Status.PASS,
        "callbacks": Status.PASS,
    }
    assert result.abi_version is AbiVersion.V0_2_1 and result.kind == "http"
    assert checks["imports"].message.startswith("1 import, all served by Envoy (ABI 0.2.1)")


def test_missing_abi_version_is_envoys_message() -> None:
    _, checks = compat(proxy_wat(HTTP, abi=""))
    assert checks["abi_version"].status is Status.FAIL
    assert checks["abi_version"].message == "Missing or unknown Proxy-Wasm ABI version"


def test_unknown_abi_marker_is_named() -> None:
    _, checks = compat(proxy_wat(HTTP, abi="0_3_0"))
    assert checks["abi_version"].status is Status.FAIL
    assert "unknown marker: proxy_abi_version_0_3_0" in checks["abi_version"].message


def test_abi_newer_than_the_target_envoy_fails() -> None:
    _, checks = compat(proxy_wat(HTTP), AbiVersion.V0_2_0)
    assert checks["abi_version"].status is Status.FAIL
    assert "newer than the target Envoy's 0.2.0" in checks["abi_version"].message


def test_missing_allocator_is_envoys_message() -> None:
    _, checks = compat(proxy_wat(HTTP, alloc=False))
    assert checks["allocator"].status is Status.FAIL
    assert checks["allocator"].message == "Wasm module is missing malloc function."


def test_allocator_with_a_bad_signature() -> None:
    _, checks = compat(proxy_wat('(func (export "malloc") (param i64) (result i32) (i32.const 0))'))
    assert checks["allocator"].status is Status.FAIL
    assert checks["allocator"].message == (
        "Bad function signature for: malloc, want: (i32) -> (i32), "
        "but the module exports: (i64) -> (i32)"
    )


def test_every_unknown_import_is_named() -> None:
    imports = """
      (import "env" "proxy_get_log_level" (func (param i32) (result i32)))
      (import "env" "proxy_log" (func (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (import "go" "debug" (func (param i32)))
      (import "env" "some_global" (global i32))
    """
    _, checks = compat(proxy_wat(HTTP, abi="0_2_0", imports=imports))
    check = checks["imports"]
    assert check.status is Status.FAIL
    assert check.message == (
        "5 of 6 imports not served by Envoy (ABI 0.2.0): env.proxy_get_log_level, env.proxy_log, "
        "wasi_snapshot_preview1.poll_oneoff, go.debug, env.some_global"
    )
    assert (
        "env.proxy_log: signature want: (i32 i32) -> (i32), but host exports: "
        "(i32 i32 i32) -> (i32)" in check.detail_lines
    )
    assert check.detail_lines[-1] == (
        "Envoy refuses the module: Failed to load Wasm module due to a missing import: "
        "env.proxy_get_log_level"
    )
    rows = {r["name"]: r for r in check.details["imports"]}
    assert rows["fd_write"]["ok"] and not rows["poll_oneoff"]["ok"]


def test_version_specific_functions_follow_the_declared_abi() -> None:
    imports = '(import "env" "proxy_continue_request" (func (result i32)))'
    _, old = compat(proxy_wat(HTTP.replace("i32 i32 i32", "i32 i32"), abi="0_1_0", imports=imports))
    assert old["imports"].status is Status.PASS
    _, new = compat(proxy_wat(HTTP, abi="0_2_1", imports=imports))
    assert new["imports"].status is Status.FAIL


@pytest.mark.parametrize(
    ("body", "kind", "status"),
    [
        (HTTP, "http", Status.PASS),
        (TCP, "network", Status.PASS),
        (HTTP + TCP, "both", Status.PASS),
        ("", "none", Status.WARN),
    ],
)
def test_callbacks_tell_the_filter_kind(body: str, kind: str, status: Status) -> None:
    result, checks = compat(proxy_wat(body))
    assert result.kind == kind
    assert checks["callbacks"].status is status
    assert checks["callbacks"].details["kind"] == kind


def test_callback_with_a_bad_signature_is_envoys_message() -> None:
    bad = '(func (export "proxy_on_request_headers") (param i32 i32) (result i32) (i32.const 0))'
    _, checks = compat(proxy_wat(bad))  # 0.2.x headers callbacks take end_of_stream too
    assert checks["callbacks"].status is Status.FAIL
    assert checks["callbacks"].message == (
        "Bad function signature for: proxy_on_request_headers, want: (i32 i32 i32) -> (i32), "
        "but the module exports: (i32 i32) -> (i32)"
    )


def test_unknown_callbacks_are_listed_as_ignored() -> None:
    old_http = HTTP.replace("i32 i32 i32", "i32 i32")  # 0.1.0: no end_of_stream
    foreign = (
        '(func (export "proxy_on_foreign_function") (param i32 i32 i32) (result i32) (i32.const 0))'
    )
    _, checks = compat(proxy_wat(old_http + foreign, abi="0_1_0"))
    assert checks["callbacks"].status is Status.PASS
    assert checks["callbacks"].details["ignored"] == ["proxy_on_foreign_function"]
    assert "Envoy ignores it: proxy_on_foreign_function" in checks["callbacks"].detail_lines[0]


@pytest.mark.parametrize(
    ("name", "abi", "kind", "wasi"),
    [
        (C_HEADERS, "0.2.1", "http", 0),
        (C_BODY, "0.2.1", "http", 0),
        (C_TCP, "0.2.1", "network", 0),
        (AS_INDEX, "0.2.0", "http", 1),  # wasi_unstable.proc_exit
    ],
)
def test_c_and_assemblyscript_plugins(name: str, abi: str, kind: str, wasi: int) -> None:
    report = check_bytes(built(name), b"{}", root_id="as_headers")
    checks = by_id(report)
    assert report.abi_version == abi and report.kind == kind
    for check_id in (
        "compat.abi_version",
        "compat.allocator",
        "compat.imports",
        "compat.callbacks",
    ):
        assert checks[check_id].status is Status.PASS, checks[check_id].message
    assert checks["compat.imports"].message.endswith(f"{wasi} WASI")


def test_assemblyscript_plugin_against_an_older_envoy() -> None:
    report = check_bytes(built(AS_INDEX), b"{}", options=Options(envoy_abi="0.1.0"))
    assert by_id(report)["compat.abi_version"].status is Status.FAIL
