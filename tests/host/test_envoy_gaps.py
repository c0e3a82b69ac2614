"""Regressions for places where the host once differed from Envoy 1.40 (each was a strict xfail
in ``tests/conformance``): partial body replace, upstream.* in the request body phase, signature
wording in load errors, the callout timeout response, and WASI environment variables."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

import struct

import pytest

from tests.host.wat import BASIC, plugin
from wasm_agent.host.abi import Status
from wasm_agent.host.context import Buffer
from wasm_agent.host.harness import LoadError, start_plugin
from wasm_agent.host.maps import serialize_pairs

REQ = {":method": "POST", ":path": "/", ":authority": "svc"}


def _codes(host) -> list[int]:
    return [ord(m) - 48 for m in host.log_messages() if len(m) == 1]


# -- proxy_set_buffer_bytes: Envoy's Buffer::copyFrom --------------------------------------

# (start, size) -> (status, body) for "X" written into b"middle", as Envoy 1.40 answers
# (tests/conformance SET_BUFFER_SHAPES and resize_partial).
SHAPES = {
    (0, 0): (Status.OK, b"Xmiddle"),  # prepend
    (0, 1): (Status.OK, b"Xiddle"),  # drain 1, prepend
    (0, 4): (Status.OK, b"Xle"),
    (0, 6): (Status.OK, b"X"),  # replace all
    (0, 100): (Status.OK, b"X"),
    (6, 0): (Status.OK, b"middleX"),  # append
    (100, 0): (Status.OK, b"middleX"),
    (7, 1): (Status.OK, b"middleX"),
    (2, 1): (Status.BAD_ARGUMENT, b"middle"),  # inside the body
    (2, 4): (Status.BAD_ARGUMENT, b"middle"),
    (3, 0): (Status.BAD_ARGUMENT, b"middle"),
}


@pytest.mark.parametrize(("start", "size"), list(SHAPES))
def test_set_buffer_shapes_follow_envoy(start: int, size: int) -> None:
    buffer = Buffer(b"middle", mutable=True)
    status, body = SHAPES[(start, size)]
    assert buffer.copy_from(start, size, b"X") == status
    assert bytes(buffer.data) == body


def test_immutable_buffers_refuse_writes() -> None:
    buffer = Buffer(b"config")
    assert buffer.copy_from(0, 1, b"X") == Status.BAD_ARGUMENT
    assert bytes(buffer.data) == b"config"


def test_partial_replace_from_the_plugin() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
        (call $st (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 1024) (i32.const 1)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, data={1024: "X"}))
    ex = host.exchange(REQ, b"middle", frontend=False)
    assert _codes(host) == [0]
    assert bytes(ex.upstream.body) == b"Xiddle"


# -- upstream.* once the request headers went upstream ---------------------------------------


def test_upstream_address_known_in_the_request_body_phase() -> None:
    body = (
        BASIC
        + """
      (func $p (param $a i32) (param $n i32)
        (call $st (call $proxy_get_property (local.get $a) (local.get $n) (i32.const 32) (i32.const 36))))
      (func $all
        (call $p (i32.const 1024) (i32.const 16))   ;; upstream.address
        (call $p (i32.const 1040) (i32.const 13))   ;; upstream.port
        (call $p (i32.const 1060) (i32.const 12)))  ;; request.path
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $all) (i32.const 0))
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (call $all) (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $all) (i32.const 0))
    """
    )
    data = {1024: "upstream\0address", 1040: "upstream\0port", 1060: "request\0path"}
    host = start_plugin(plugin(body, data=data))
    host.exchange(REQ, b"twelve bytes", frontend=False)
    headers, request_body, response = [1, 1, 0], [0, 0, 1], [0, 0, 1]
    assert _codes(host) == [*headers, *request_body, *response]


def test_no_upstream_after_a_local_reply_from_the_request_headers() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $proxy_send_local_response (i32.const 403) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
        (i32.const 1))
      (func (export "proxy_on_log") (param i32)
        (call $st (call $proxy_get_property (i32.const 1024) (i32.const 16) (i32.const 32) (i32.const 36))))
    """
    )
    host = start_plugin(plugin(body, data={1024: "upstream\0address"}))
    ex = host.exchange(REQ, b"body")
    assert ex.local_response is not None and ex.upstream is None
    assert _codes(host) == [1]


# -- load errors print signatures like cpp-host's V8 printValTypes ----------------------------


def _load_error(wasm: bytes) -> str:
    with pytest.raises(LoadError) as info:
        start_plugin(wasm)
    return str(info.value)


def test_import_mismatch_wording() -> None:
    wasm = plugin(BASIC, extra='(import "env" "proxy_log" (func (param i32 i32) (result i32)))')
    assert _load_error(wasm) == (
        "Failed to load Wasm module due to an import type mismatch: env.proxy_log, "
        "want: i32 i32 -> i32, but host exports: i32 i32 i32 -> i32"
    )


def test_bad_allocator_wording() -> None:
    body = '(func (export "proxy_on_memory_allocate") (param i64) (result i64) (i64.const 0))'
    assert _load_error(plugin(body, allocator=None)) == (
        "Bad function signature for: proxy_on_memory_allocate, want: i32 -> i32, "
        "but the module exports: i64 -> i64"
    )


def test_no_types_print_as_void() -> None:
    body = '(func (export "proxy_on_log") (param i32) (result i32) (i32.const 0))'
    assert _load_error(plugin(BASIC + body)) == (
        "Bad function signature for: proxy_on_log, want: i32 -> void, "
        "but the module exports: i32 -> i32"
    )


# -- a timed-out callout: Envoy's async client delivers its router's 504 -----------------------

CALLOUT = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $st (call $proxy_http_call (i32.const 1024) (i32.const 7) (i32.const 1100) (i32.load (i32.const 1096))
                    (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 200) (i32.const 44)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $c i32) (param $t i32) (param $h i32) (param $b i32) (param $tr i32)
    (call $st (local.get $h)) (call $st (local.get $tr))
    (call $st (call $proxy_get_header_map_pairs (i32.const 6) (i32.const 32) (i32.const 36)))
    (call $logret)
    (call $st (call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (local.get $b) (i32.const 32) (i32.const 36)))
    (call $logret)
    (call $st (call $proxy_get_status (i32.const 48) (i32.const 32) (i32.const 36)))
    (call $st (i32.load (i32.const 48)))
    (drop (call $proxy_set_effective_context (i32.const 2)))
    (drop (call $proxy_continue_stream (i32.const 0))))
"""
)


def test_callout_timeout_delivers_envoys_504() -> None:
    """Checked against Envoy 1.40: 3 headers (:status 504, content-length 24, content-type
    text/plain), body "upstream request timeout", no trailers, status OK."""
    hdrs = serialize_pairs([(b":method", b"GET"), (b":path", b"/slow"), (b":authority", b"a")])
    data = {1024: "callout", 1096: struct.pack("<I", len(hdrs)), 1100: hdrs}
    host = start_plugin(plugin(CALLOUT, data=data))
    s = host.http_stream()
    s.send_request_headers({**REQ, ":method": "GET"}, end_stream=True)
    (call,) = host.http_callouts
    host.timeout_http_call(call.token)
    logs = host.log_messages()
    pairs = serialize_pairs(
        [(b":status", b"504"), (b"content-length", b"24"), (b"content-type", b"text/plain")]
    )
    assert logs[0] == "0"  # http_call OK
    assert logs[1:4] == ["3", "0", "0"]
    assert logs[4].encode("latin-1") == pairs
    assert logs[5:] == ["0", "upstream request timeout", "0", "0"]
    assert call.answered and s.upstream.complete


# -- WASI environment: vm_config.environment_variables ----------------------------------------

ENV = (
    BASIC
    + """
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $st (call $wasi_environ_sizes_get (i32.const 300) (i32.const 304)))
    (call $st (i32.load (i32.const 300)))
    (call $st (i32.load (i32.const 304)))
    (call $st (call $wasi_environ_get (i32.const 400) (i32.const 500)))
    (call $st (i32.sub (i32.load (i32.const 400)) (i32.const 500)))
    (call $st (i32.sub (i32.load (i32.const 404)) (i32.const 500)))
    (call $logmem (i32.const 500) (i32.load (i32.const 304)))
    (call $st (call $wasi_environ_get (i32.const 400) (i32.const 99999999)))
    (i32.const 1))
"""
)


def test_environment_reaches_wasi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WASM_AGENT_TEST_HOST_KEY", "from-host")
    monkeypatch.delenv("WASM_AGENT_TEST_UNSET", raising=False)
    host = start_plugin(
        plugin(ENV),
        environment={"A": "1"},
        host_env_keys=["WASM_AGENT_TEST_HOST_KEY", "WASM_AGENT_TEST_UNSET"],
    )
    logs = host.log_messages()
    text = b"A=1\0WASM_AGENT_TEST_HOST_KEY=from-host\0"
    assert [ord(m) - 48 for m in logs[:6]] == [0, 2, len(text), 0, 0, 4]
    assert logs[6].encode() == text
    assert ord(logs[7]) - 48 == 21  # EFAULT


def test_no_environment_by_default() -> None:
    host = start_plugin(plugin(ENV))
    assert [ord(m) - 48 for m in host.log_messages()[:4]] == [0, 0, 0, 0]


def test_duplicated_environment_key_is_envoys_config_error() -> None:
    with pytest.raises(ValueError, match=r"Key K is duplicated in envoy\.extensions\.wasm\.v3"):
        start_plugin(plugin(ENV), environment={"K": "v"}, host_env_keys=["K"], plugin_name="p")
