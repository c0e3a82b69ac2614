"""HTTP filter behaviour: header maps, bodies, actions, local responses, continue."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

import pytest

from tests.host.wat import BASIC, plugin
from wasm_agent.host.harness import start_plugin
from wasm_agent.host.maps import serialize_pairs

REQ = {":method": "POST", ":path": "/p?q=1", ":authority": "example.com", "x-a": "1"}

MAPS = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param $c i32) (param $n i32) (param $e i32) (result i32)
    ;; add x-b: 2, replace x-a with 9, remove x-gone, then dump the serialized pairs and the size
    (call $st (call $proxy_add_header_map_value (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 1030) (i32.const 1)))
    (call $st (call $proxy_replace_header_map_value (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 1046) (i32.const 1)))
    (call $st (call $proxy_remove_header_map_value (i32.const 0) (i32.const 1050) (i32.const 6)))
    (call $st (call $proxy_get_header_map_value (i32.const 0) (i32.const 1050) (i32.const 6) (i32.const 32) (i32.const 36)))
    (call $st (call $proxy_get_header_map_value (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 32) (i32.const 36)))
    (call $logret)
    (call $st (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 32) (i32.const 36)))
    (call $logret)
    (call $st (call $proxy_get_header_map_size (i32.const 0) (i32.const 44)))
    (call $st (i32.load (i32.const 44)))
    ;; response headers are not available while the request headers run
    (call $st (call $proxy_get_header_map_size (i32.const 2) (i32.const 44)))
    ;; bad map type
    (call $st (call $proxy_get_header_map_size (i32.const 8) (i32.const 44)))
    (i32.const 0))
"""
)
MAPS_DATA = {1024: "x-b", 1030: "2", 1040: "X-A", 1046: "9", 1050: "x-gone"}


def test_header_map_operations_and_serialization() -> None:
    host = start_plugin(plugin(MAPS, data=MAPS_DATA))
    s = host.http_stream()
    assert s.send_request_headers({**REQ, "x-gone": "bye"}, end_stream=True) == "CONTINUE"
    final = [(":method", "POST"), (":path", "/p?q=1"), (":authority", "example.com"),
             ("x-b", "2"), ("x-a", "9")]  # fmt: skip
    assert s.upstream.headers.pairs() == final
    assert s.upstream.complete
    logs = host.log_messages()
    codes = [ord(c) - 48 for c in logs[:5]]
    assert codes == [0, 0, 0, 1, 0]  # get of a removed header: NOT_FOUND (0.2.x)
    assert logs[5] == "9"
    assert logs[6] == "0"
    wire = serialize_pairs([(k.encode(), v.encode()) for k, v in final])
    assert logs[7].encode("latin-1") == wire
    size = sum(len(k) + len(v) for k, v in final)
    assert [ord(c) - 48 for c in logs[8:]] == [0, size, 2, 2]


def test_v010_missing_header_is_ok_and_empty() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_headers") (param i32 i32) (result i32)
        (i32.store (i32.const 32) (i32.const 77))
        (call $st (call $proxy_get_header_map_value (i32.const 0) (i32.const 1050) (i32.const 6)
                         (i32.const 32) (i32.const 36)))
        (call $st (i32.load (i32.const 36)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, version="0_1_0", data={1050: "x-none"}))
    host.exchange(REQ)
    assert host.log_messages() == ["0", "0"]


BODY = (
    BASIC
    + """
  (global $calls (mut i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param $c i32) (param $n i32) (param $end i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.eqz (local.get $end)) (then (return (i32.const 1))))  ;; StopIterationAndBuffer
    (call $st (local.get $n))
    ;; prepend "<", append ">" and log the whole buffer
    (call $st (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1)))
    (call $st (call $proxy_set_buffer_bytes (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 1025) (i32.const 1)))
    ;; a replace in the middle is not supported by Envoy: BAD_ARGUMENT
    (call $st (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 1025) (i32.const 1)))
    (call $st (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 32) (i32.const 36)))
    (call $logret)
    ;; partial read with an offset
    (call $st (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 1) (i32.const 3) (i32.const 32) (i32.const 36)))
    (call $logret)
    ;; reading past the end: OK, nothing written (as Envoy); status of the request body buffer
    (call $st (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 999) (i32.const 1) (i32.const 32) (i32.const 36)))
    (call $st (call $proxy_get_buffer_status (i32.const 0) (i32.const 44) (i32.const 48)))
    (call $st (i32.load (i32.const 44)))
    (call $st (global.get $calls))
    (i32.const 0))
"""
)


def test_chunked_body_buffered_then_modified() -> None:
    host = start_plugin(plugin(BODY, data={1024: "<>"}))
    s = host.http_stream()
    s.send_request_headers(REQ)
    assert s.send_request_body(b"abc", end_stream=False) == "STOP_ITERATION_AND_BUFFER"
    assert s.send_request_body(b"def", end_stream=False) == "STOP_ITERATION_AND_BUFFER"
    assert bytes(s.upstream.body) == b""
    assert s.send_request_body(b"gh", end_stream=True) == "CONTINUE"
    assert bytes(s.upstream.body) == b"<abcdefgh>"
    assert s.upstream.complete
    logs = host.log_messages()
    assert logs[0] == chr(48 + 8)
    assert [ord(c) - 48 for c in logs[1:5]] == [0, 0, 2, 0]
    assert logs[5] == "<abcdefgh>"
    assert logs[6] == "0" and logs[7] == "abc"
    assert [ord(c) - 48 for c in logs[8:]] == [0, 0, 10, 3]


ACTIONS = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.load (i32.const 2000)))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (i32.load (i32.const 2004)))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (i32.const 0))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $proxy_set_effective_context (i32.const 2)))
    (call $st (call $proxy_continue_stream (i32.const 0))))
  (func (export "set") (param i32 i32) (i32.store (i32.const 2000) (local.get 0))
    (i32.store (i32.const 2004) (local.get 1)))
"""
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(0, "CONTINUE"), (1, "STOP_ALL_ITERATION_AND_WATERMARK"), (3, "STOP_ALL_ITERATION_AND_BUFFER"),
     (4, "STOP_ALL_ITERATION_AND_WATERMARK"), (7, "STOP_ALL_ITERATION_AND_WATERMARK"),
     (-1, "STOP_ALL_ITERATION_AND_WATERMARK")],
)  # fmt: skip
def test_headers_action_mapping(code: int, expected: str) -> None:
    host = start_plugin(plugin(ACTIONS))
    host.vm._funcs["set"](code, 0)
    s = host.http_stream()
    assert s.send_request_headers(REQ) == expected
    assert (s.upstream.headers is not None) == (expected == "CONTINUE")


@pytest.mark.parametrize(
    ("code", "expected"),
    [(0, "CONTINUE"), (1, "STOP_ITERATION_AND_BUFFER"), (2, "STOP_ITERATION_AND_WATERMARK"),
     (3, "STOP_ITERATION_NO_BUFFER"), (9, "STOP_ITERATION_NO_BUFFER")],
)  # fmt: skip
def test_body_action_mapping(code: int, expected: str) -> None:
    host = start_plugin(plugin(ACTIONS))
    host.vm._funcs["set"](0, code)
    s = host.http_stream()
    s.send_request_headers(REQ)
    assert s.send_request_body(b"x", end_stream=True) == expected


def test_paused_headers_hold_body_until_continue() -> None:
    host = start_plugin(plugin(ACTIONS))
    host.vm._funcs["set"](1, 0)
    s = host.http_stream()
    assert s.send_request_headers(REQ) == "STOP_ALL_ITERATION_AND_WATERMARK"
    assert s.send_request_body(b"held", end_stream=True) == "PAUSED"
    assert s.upstream.headers is None
    host.tick()  # the plugin continues the request from its root context
    assert host.log_messages() == ["0"]
    assert s.upstream.headers is not None and bytes(s.upstream.body) == b"held"
    assert s.upstream.complete
    assert s.actions == [("request_headers", "STOP_ALL_ITERATION_AND_WATERMARK"),
                         ("request_body", "CONTINUE")]  # fmt: skip


LOCAL = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $st (call $proxy_send_local_response (i32.const 403) (i32.const 1024) (i32.const 6)
       (i32.const 1040) (i32.const 6) (i32.const 1100) (i32.const 21) (i32.const -1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $logmem (i32.const 1060) (i32.const 9)) (i32.const 0))
"""
)


def test_local_response() -> None:
    pairs = serialize_pairs([(b"x-why", b"no")])
    assert len(pairs) == 21
    data = {1024: "denied", 1040: "go away", 1060: "resp-hdrs", 1100: pairs}
    host = start_plugin(plugin(LOCAL, data=data))
    ex = host.exchange(REQ, b"body", {":status": "200"}, b"never")
    assert ex.upstream is None
    assert ex.local_response is not None and ex.local_response.status == 403
    assert ex.local_response.details == "denied"
    headers = ex.client.headers.to_dict()
    assert headers.pop("date").endswith(" GMT")
    # HCM: server; connection: close as the reply left before the request body arrived
    assert headers == {
        ":status": "403", "content-length": "6", "content-type": "text/plain", "x-why": "no",
        "server": "envoy", "connection": "close",
    }  # fmt: skip
    assert bytes(ex.client.body) == b"go awa"
    # a local reply stops iteration even though the callback returned Continue
    assert ("request_headers", "STOP_ALL_ITERATION_AND_WATERMARK") in ex.actions
    assert host.log_messages() == ["0", "resp-hdrs"]


def test_close_stream_resets() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $st (call $proxy_close_stream (i32.const 0)))
        (call $st (call $proxy_close_stream (i32.const 9)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body))
    ex = host.exchange(REQ)
    assert ex.reset and ex.client is None
    assert host.log_messages() == ["0", "2"]


def test_lifecycle_order_and_on_log_sees_headers() -> None:
    body = """
      (func (export "proxy_on_context_create") (param $c i32) (param $p i32)
        (call $st (local.get $c)) (call $st (local.get $p)))
      (func (export "proxy_on_log") (param i32)
        (call $logmem (i32.const 1024) (i32.const 3))
        (call $st (call $proxy_get_header_map_value (i32.const 2) (i32.const 1100) (i32.const 7)
                        (i32.const 32) (i32.const 36)))
        (call $logret))
      (func (export "proxy_on_done") (param i32) (result i32)
        (call $logmem (i32.const 1030) (i32.const 4)) (i32.const 1))
      (func (export "proxy_on_delete") (param i32) (call $logmem (i32.const 1040) (i32.const 6)))
    """
    host = start_plugin(
        plugin(body, data={1024: "log", 1030: "done", 1040: "delete", 1100: ":status"})
    )
    host.exchange(REQ, response_headers={":status": "201"})
    assert host.log_messages() == ["1", "0", "2", "1", "log", "0", "201", "done", "delete"]


def test_response_path_and_trailers() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (drop (call $proxy_add_header_map_value (i32.const 2) (i32.const 1024) (i32.const 5)
                    (i32.const 1030) (i32.const 2))) (i32.const 0))
      (func (export "proxy_on_response_trailers") (param $c i32) (param $n i32) (result i32)
        (call $st (local.get $n))
        (drop (call $proxy_add_header_map_value (i32.const 3) (i32.const 1024) (i32.const 5)
                    (i32.const 1030) (i32.const 2))) (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, data={1024: "x-out", 1030: "ok"}))
    ex = host.exchange(
        REQ, b"", {":status": "200"}, b"hello", response_trailers={"grpc-status": "0"}
    )
    assert ex.client.headers.to_dict()["x-out"] == "ok"
    assert bytes(ex.client.body) == b"hello"
    assert ex.client.trailers.pairs() == [("grpc-status", "0"), ("x-out", "ok")]
    assert host.log_messages() == ["1"]


SET_PAIRS = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $st (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 1100) (i32.load (i32.const 1096))))
    ;; a malformed buffer (count larger than the data) clears the map, like cpp-host toPairs
    (call $st (call $proxy_set_header_map_pairs (i32.const 1) (i32.const 1024) (i32.const 4)))
    (i32.const 0))
"""
)


def test_set_header_map_pairs_replaces_everything() -> None:
    import struct

    pairs = serialize_pairs([(b":method", b"PUT"), (b":path", b"/new"), (b"X-New", b"v")])
    data = {1024: b"\x09\x00\x00\x00", 1096: struct.pack("<I", len(pairs)), 1100: pairs}
    host = start_plugin(plugin(SET_PAIRS, data=data))
    s = host.http_stream()
    s.send_request_headers(REQ)
    assert s.upstream.headers.pairs() == [(":method", "PUT"), (":path", "/new"), ("x-new", "v")]
    # request trailers are not available in the headers callback: BAD_ARGUMENT
    assert host.log_messages() == ["0", "2"]


def test_fueled_and_unmetered_vms_coexist() -> None:
    """All engines (fuel on/off, epoch) in one process: function types are per engine."""
    wasm = plugin(MAPS, data=MAPS_DATA)
    a = start_plugin(wasm, fuel=None)
    b = start_plugin(wasm)
    c = start_plugin(wasm, deadline_ms=1000)  # fuel and an epoch deadline together
    for host in (a, b, c, start_plugin(wasm, fuel=None)):
        assert host.exchange(REQ).upstream.headers.to_dict()["x-b"] == "2"


def test_on_log_maps_are_read_only_and_continue_types() -> None:
    """Matches Envoy 1.40: in on_log headers read fine but size/mutation are BAD_ARGUMENT;
    continue_stream(upstream) is UNIMPLEMENTED, (downstream) OK on an HTTP stream."""
    body = (
        BASIC
        + """
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (call $st (call $proxy_continue_stream (i32.const 3)))
        (call $st (call $proxy_continue_stream (i32.const 2)))
        (i32.const 0))
      (func (export "proxy_on_log") (param i32)
        (call $st (call $proxy_get_header_map_size (i32.const 0) (i32.const 44)))
        (call $st (call $proxy_get_header_map_value (i32.const 0) (i32.const 1030) (i32.const 5) (i32.const 32) (i32.const 36)))
        (call $logret)
        (call $st (call $proxy_add_header_map_value (i32.const 2) (i32.const 1030) (i32.const 5) (i32.const 1030) (i32.const 5))))
    """
    )
    host = start_plugin(plugin(body, data={1030: ":path"}))
    host.exchange(REQ)
    assert host.log_messages() == [chr(48 + 12), "0", "2", "0", "/p?q=1", "2"]


def test_local_response_from_response_path_replaces_response() -> None:
    """Envoy 1.40: the reply replaces the upstream response; the plugin is not called again."""
    body = (
        BASIC
        + """
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (call $st (call $proxy_send_local_response (i32.const 418) (i32.const 0) (i32.const 0)
           (i32.const 1060) (i32.const 6) (i32.const 0) (i32.const 0) (i32.const -1)))
        (i32.const 0))
      (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
        (call $st (i32.const 9)) (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, data={1060: "teapot"}))
    ex = host.exchange(REQ, b"", {":status": "200"}, b"upstream body")
    assert ex.upstream is not None
    assert ex.client.headers.to_dict()[":status"] == "418"
    assert bytes(ex.client.body) == b"teapot"
    assert host.log_messages() == ["0"]


def test_local_response_keeps_the_plugins_content_type() -> None:
    """Envoy adds text/plain only when the plugin set no content-type."""
    pairs = serialize_pairs([(b"content-type", b"application/json")])
    body = (
        BASIC
        + f"""
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $proxy_send_local_response (i32.const 400) (i32.const 0) (i32.const 0)
           (i32.const 1040) (i32.const 2) (i32.const 1100) (i32.const {len(pairs)}) (i32.const -1)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, data={1040: "{}", 1100: pairs}))
    ex = host.exchange(REQ)
    assert ex.client.headers.get_all("content-type") == [b"application/json"]
    assert ex.client.headers.to_dict()["content-length"] == "2"


TRAILERS = (
    BASIC
    + """
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $proxy_set_effective_context (i32.const 2)))
    (call $st (call $proxy_continue_stream (i32.load (i32.const 2000)))))
  (func (export "set") (param i32) (i32.store (i32.const 2000) (local.get 0)))
"""
)


def test_trailers_pause_and_resume_with_buffered_body() -> None:
    host = start_plugin(plugin(TRAILERS))
    s = host.http_stream()
    s.send_request_headers(REQ)
    assert s.send_request_body(b"part", end_stream=False) == "STOP_ITERATION_AND_BUFFER"
    assert s.send_request_trailers({"x-t": "1"}) == "STOP_ITERATION"
    assert s.upstream.headers is not None and bytes(s.upstream.body) == b""
    host.vm._funcs["set"](0)
    host.tick()
    assert bytes(s.upstream.body) == b"part"
    assert s.upstream.trailers.to_dict() == {"x-t": "1"} and s.upstream.complete
    # response headers stopped: the body waits, then both go on after continue(response)
    s.send_response_headers({":status": "200"})
    assert s.send_response_body(b"resp", end_stream=True) == "PAUSED"
    assert s.client.headers is None
    host.vm._funcs["set"](1)
    host.tick()
    assert s.client.headers.to_dict()[":status"] == "200"
    assert bytes(s.client.body) == b"resp" and s.client.complete


def test_exchange_with_chunked_bodies() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_body") (param $c i32) (param $n i32) (param $e i32) (result i32)
        (call $st (local.get $n)) (i32.const 0))
    """
    )
    host = start_plugin(plugin(body))
    ex = host.exchange(REQ, b"abcdefgh", {":status": "200"}, b"xyz", chunk_size=3, frontend=False)
    assert host.log_messages() == ["3", "3", "2"]
    assert bytes(ex.upstream.body) == b"abcdefgh" and bytes(ex.client.body) == b"xyz"


def test_exchange_with_explicit_chunks_and_empty_end_frame() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_response_body") (param $c i32) (param $n i32) (param $e i32) (result i32)
        (call $st (local.get $n)) (call $st (local.get $e)) (i32.const 0))
    """
    )
    host = start_plugin(plugin(body))
    ex = host.exchange(REQ, b"", {":status": "200"}, [b"hello", b""])
    assert host.log_messages() == ["5", "0", "0", "1"]
    assert bytes(ex.client.body) == b"hello" and ex.client.complete


def test_continue_and_end_stream_is_plain_continue() -> None:
    """Envoy's convertFilterHeadersStatus has no case for 2: it continues normally."""
    host = start_plugin(plugin(ACTIONS))
    host.vm._funcs["set"](2, 0)
    s = host.http_stream()
    assert s.send_request_headers(REQ) == "CONTINUE"
    s.send_request_body(b"kept", end_stream=True)
    assert bytes(s.upstream.body) == b"kept" and s.upstream.complete
