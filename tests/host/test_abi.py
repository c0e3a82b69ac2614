"""The rest of the ABI: properties, logging, time, metrics, shared data/queues, callouts,
ticks, foreign functions, done, and bad pointers."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

import struct

import pytest

from tests.host.wat import BASIC, plugin
from wasm_agent.host.harness import LogLevel, start_plugin
from wasm_agent.host.maps import serialize_pairs

REQ = {":method": "GET", ":path": "/a/b?x=1", ":authority": "svc", "user-agent": "ua/1"}


def _codes(host) -> list[int]:
    return [ord(m) - 48 for m in host.log_messages() if len(m) == 1]


PROPS = (
    BASIC
    + """
  (func $prop (param $p i32) (param $n i32)
    (call $st (call $proxy_get_property (local.get $p) (local.get $n) (i32.const 32) (i32.const 36)))
    (call $logret))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $prop (i32.const 1024) (i32.const 12))   ;; request\\0path
    (call $prop (i32.const 1040) (i32.const 12))   ;; request\\0time
    (call $prop (i32.const 1060) (i32.const 11))   ;; source\\0port
    (call $prop (i32.const 1080) (i32.const 26))   ;; request\\0headers\\0user-agent
    (call $prop (i32.const 1110) (i32.const 11))   ;; plugin_name
    (call $prop (i32.const 1130) (i32.const 8))    ;; custom\\0x (test-set)
    (call $st (call $proxy_set_property (i32.const 1150) (i32.const 7) (i32.const 1170) (i32.const 2)))
    (call $prop (i32.const 1150) (i32.const 7))    ;; mine\\0v, set by the plugin
    (call $prop (i32.const 1180) (i32.const 7))    ;; no\\0such
    (call $st (call $proxy_get_property (i32.const 99999999) (i32.const 4) (i32.const 32) (i32.const 36)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $prop (i32.const 1190) (i32.const 13))   ;; response\\0code
    (i32.const 0))
  (func (export "proxy_on_tick") (param i32)
    (call $st (call $proxy_set_property (i32.const 1150) (i32.const 7) (i32.const 1170) (i32.const 2))))
"""
)
PROPS_DATA = {
    1024: "request\0path", 1040: "request\0time", 1060: "source\0port",
    1080: "request\0headers\0user-agent", 1110: "plugin_name", 1130: "custom\0x",
    1150: "mine_v0", 1170: "hi", 1180: "no\0such", 1190: "response\0code",
}  # fmt: skip


def test_properties() -> None:
    host = start_plugin(
        plugin(PROPS, data=PROPS_DATA), plugin_name="props", properties={"custom.x": "set-by-test"},
        clock_ns=lambda: 1234567890123,
    )  # fmt: skip
    host.exchange(REQ, response_headers={":status": "418"})
    logs = host.log_bytes()
    pairs = list(zip(logs[0:12:2], logs[1:12:2], strict=True))
    assert pairs[0] == (b"0", b"/a/b?x=1")
    assert pairs[1] == (b"0", struct.pack("<q", 1234567890123))
    assert pairs[2] == (b"0", struct.pack("<q", 50000))
    assert pairs[3] == (b"0", b"ua/1")
    assert pairs[4] == (b"0", b"props")
    assert pairs[5] == (b"0", b"set-by-test")
    assert logs[12] == b"0"  # set_property on a stream
    assert (logs[13], logs[14]) == (b"0", b"hi")
    assert logs[15] == b"1"  # unknown property: NOT_FOUND (the return slots keep "hi")
    assert logs[17] == b"6"  # bad pointer
    assert logs[18] == b"0" and logs[19] == struct.pack("<q", 418)
    host.tick()
    assert host.log_messages()[-1] == "1"  # set_property on the root context: NOT_FOUND


LOGS = (
    BASIC
    + """
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $st (call $proxy_log (i32.const 0) (i32.const 1024) (i32.const 5)))
    (call $st (call $proxy_log (i32.const 4) (i32.const 1024) (i32.const 5)))
    (call $st (call $proxy_log (i32.const 6) (i32.const 1024) (i32.const 5)))
    (call $st (call $proxy_log (i32.const 2) (i32.const 65530) (i32.const 100000)))
    (call $st (call $proxy_get_log_level (i32.const 44)))
    (call $st (i32.load (i32.const 44)))
    (call $st (call $proxy_get_current_time_nanoseconds (i32.const 48)))
    (call $st (i32.wrap_i64 (i64.load (i32.const 48))))
    (call $st (call $proxy_get_current_time_nanoseconds (i32.const -8)))
    (i32.const 1))
"""
)


def test_logging_levels_and_time() -> None:
    host = start_plugin(
        plugin(LOGS, data={1024: "hello"}), log_level=LogLevel.DEBUG, clock_ns=lambda: 9
    )
    entries = [(e.level, e.message) for e in host.logs if e.message == "hello"]
    assert entries == [(LogLevel.ERROR, "hello")]  # trace is below the configured level
    assert _codes(host) == [0, 0, 2, 6, 0, 1, 0, 9, 6]


METRICS = (
    BASIC
    + """
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $st (call $proxy_define_metric (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 100)))
    (call $st (call $proxy_define_metric (i32.const 1) (i32.const 1030) (i32.const 5) (i32.const 104)))
    (call $st (call $proxy_define_metric (i32.const 2) (i32.const 1040) (i32.const 3) (i32.const 108)))
    (call $st (call $proxy_define_metric (i32.const 3) (i32.const 1040) (i32.const 4) (i32.const 112)))
    (call $st (i32.load (i32.const 100))) (call $st (i32.load (i32.const 104))) (call $st (i32.load (i32.const 108)))
    (call $st (call $proxy_increment_metric (i32.load (i32.const 100)) (i64.const 5)))
    (call $st (call $proxy_increment_metric (i32.load (i32.const 100)) (i64.const -1)))
    (call $st (call $proxy_increment_metric (i32.load (i32.const 104)) (i64.const -3)))
    (call $st (call $proxy_record_metric (i32.load (i32.const 104)) (i64.const 7)))
    (call $st (call $proxy_record_metric (i32.load (i32.const 108)) (i64.const 42)))
    (call $st (call $proxy_get_metric (i32.load (i32.const 100)) (i32.const 120)))
    (call $st (i32.wrap_i64 (i64.load (i32.const 120))))
    (call $st (call $proxy_get_metric (i32.load (i32.const 108)) (i32.const 120)))
    (call $st (call $proxy_get_metric (i32.const 400) (i32.const 120)))
    (i32.const 1))
"""
)


def test_metrics() -> None:
    data = {1024: "reqs", 1030: "depth", 1040: "lat"}
    host = start_plugin(plugin(METRICS, data=data), concurrency=0)  # one VM
    assert _codes(host) == [0, 0, 0, 2, 4, 5, 6, 0, 2, 0, 0, 0, 0, 5, 2, 1]  # ids as Envoy
    assert host.metrics == {"reqs": 5, "depth": 7, "lat": [42]}


def test_metrics_are_shared_by_every_vm() -> None:
    """Envoy 1.40 (--concurrency 1, a counter incremented by 3 in each VM's on_configure read
    back 3, 6, 9): a metric's value is in the stats store, shared by all VMs defining it."""
    data = {1024: "reqs", 1030: "depth", 1040: "lat"}
    host = start_plugin(plugin(METRICS, data=data))  # --concurrency 2: four VMs start
    assert _codes(host)[13] == 15  # the first worker's VM starts third: 5 + 5 + 5
    assert host.metrics == {"reqs": 20, "depth": 7, "lat": [42, 42, 42, 42]}


SHARED = (
    BASIC
    + """
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $st (call $proxy_get_shared_data (i32.const 1024) (i32.const 1) (i32.const 32) (i32.const 36) (i32.const 40)))
    (call $st (call $proxy_set_shared_data (i32.const 1024) (i32.const 1) (i32.const 1030) (i32.const 2) (i32.const 0)))
    (call $st (call $proxy_get_shared_data (i32.const 1024) (i32.const 1) (i32.const 32) (i32.const 36) (i32.const 40)))
    (call $logret)
    ;; stale CAS fails, current CAS succeeds
    (call $st (call $proxy_set_shared_data (i32.const 1024) (i32.const 1) (i32.const 1030) (i32.const 2)
                    (i32.add (i32.load (i32.const 40)) (i32.const 5))))
    (call $st (call $proxy_set_shared_data (i32.const 1024) (i32.const 1) (i32.const 1032) (i32.const 2)
                    (i32.load (i32.const 40))))
    ;; queues
    (call $st (call $proxy_register_shared_queue (i32.const 1040) (i32.const 1) (i32.const 44)))
    (call $st (call $proxy_resolve_shared_queue (i32.const 1050) (i32.const 0) (i32.const 1040) (i32.const 1) (i32.const 48)))
    (call $st (i32.sub (i32.load (i32.const 44)) (i32.load (i32.const 48))))
    (call $st (call $proxy_resolve_shared_queue (i32.const 1050) (i32.const 0) (i32.const 1041) (i32.const 1) (i32.const 48)))
    (call $st (call $proxy_dequeue_shared_queue (i32.load (i32.const 44)) (i32.const 32) (i32.const 36)))
    (call $st (call $proxy_enqueue_shared_queue (i32.const 999) (i32.const 1030) (i32.const 2)))
    (i32.const 1))
  (func (export "proxy_on_queue_ready") (param i32 i32)
    (call $st (call $proxy_dequeue_shared_queue (local.get 1) (i32.const 32) (i32.const 36)))
    (call $logret))
"""
)


def test_shared_data_and_queues() -> None:
    # one VM: with Envoy's VM count, the later VMs start against the data the first one set
    host = start_plugin(plugin(SHARED, data={1024: "k", 1030: "v1v2", 1040: "qz"}), concurrency=0)
    assert host.log_messages() == ["1", "0", "0", "v1", "8", "0", "0", "0", "0", "1", "7", "1"]
    assert host.shared_data == {b"k": b"v2"}
    assert host.enqueue("q", b"payload")
    assert host.log_messages()[-2:] == ["0", "payload"]
    assert not host.enqueue("nope", b"x")


CALLOUT = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $st (call $proxy_http_call (i32.const 1024) (i32.const 7) (i32.const 1100) (i32.load (i32.const 1096))
                    (i32.const 1040) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 44)))
    (call $st (i32.load (i32.const 44)))
    ;; missing :path etc.: BAD_ARGUMENT; bad memory: INVALID_MEMORY_ACCESS
    (call $st (call $proxy_http_call (i32.const 1024) (i32.const 7) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 44)))
    (call $st (call $proxy_http_call (i32.const 1024) (i32.const 7) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 500) (i32.const -4)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $c i32) (param $t i32) (param $h i32) (param $b i32) (param $tr i32)
    (call $st (local.get $c)) (call $st (local.get $t)) (call $st (local.get $h)) (call $st (local.get $b))
    (call $st (call $proxy_get_buffer_bytes (i32.const 4) (i32.const 0) (local.get $b) (i32.const 32) (i32.const 36)))
    (call $logret)
    (call $st (call $proxy_get_header_map_value (i32.const 6) (i32.const 1050) (i32.const 7) (i32.const 32) (i32.const 36)))
    (call $logret)
    (call $st (call $proxy_get_status (i32.const 48) (i32.const 32) (i32.const 36)))
    (call $st (i32.load (i32.const 48)))
    ;; back to the stream and let the request go on
    (call $st (call $proxy_set_effective_context (i32.const 2)))
    (call $st (call $proxy_continue_stream (i32.const 0))))
"""
)


def test_http_callout_round_trip() -> None:
    hdrs = serialize_pairs([(b":method", b"GET"), (b":path", b"/auth"), (b":authority", b"auth")])
    data = {
        1024: "authsvc",
        1040: "ping",
        1050: ":status",
        1096: struct.pack("<I", len(hdrs)),
        1100: hdrs,
    }
    host = start_plugin(plugin(CALLOUT, data=data))
    s = host.http_stream()
    assert s.send_request_headers(REQ, end_stream=True) == "STOP_ALL_ITERATION_AND_WATERMARK"
    assert _codes(host) == [0, 4, 2, 6]  # HTTP callout tokens are 4, 8, ... (as Envoy)
    (call,) = host.http_callouts
    assert (call.cluster, call.body, call.timeout_ms) == ("authsvc", b"ping", 500)
    assert call.headers.to_dict()[":path"] == "/auth"
    host.respond_http_call(call.token, {":status": "204"}, b"pong")
    logs = host.log_messages()[4:]
    assert logs == ["1", "4", "1", "4", "0", "pong", "0", "204", "0", "0", "0", "0"]
    assert s.upstream.complete and s.upstream.headers is not None


def test_http_callout_failure_reports_status() -> None:
    hdrs = serialize_pairs([(b":method", b"GET"), (b":path", b"/auth"), (b":authority", b"auth")])
    data = {
        1024: "authsvc",
        1040: "ping",
        1050: ":status",
        1096: struct.pack("<I", len(hdrs)),
        1100: hdrs,
    }
    host = start_plugin(plugin(CALLOUT, data=data))
    s = host.http_stream()
    s.send_request_headers(REQ, end_stream=True)
    host.fail_http_call(host.http_callouts[0].token)
    logs = host.log_messages()[4:]
    # no headers, no body: the body read is NOT_FOUND? no: the response exists but is empty
    assert logs[:4] == ["1", "4", "0", "0"]
    assert logs[-4:-2] == ["0", chr(48 + 11)]  # get_status: BROKEN_CONNECTION


def test_unknown_cluster_is_bad_argument() -> None:
    hdrs = serialize_pairs([(b":method", b"GET"), (b":path", b"/auth"), (b":authority", b"auth")])
    data = {
        1024: "authsvc",
        1040: "ping",
        1050: ":status",
        1096: struct.pack("<I", len(hdrs)),
        1100: hdrs,
    }
    host = start_plugin(plugin(CALLOUT, data=data), clusters={"other"})
    host.http_stream().send_request_headers(REQ, end_stream=True)
    assert _codes(host)[0] == 2


GRPC = (
    BASIC
    + """
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (call $st (call $proxy_grpc_call (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 1030) (i32.const 4)
                    (i32.const 0) (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 100) (i32.const 44)))
    (call $st (i32.load (i32.const 44)))
    (call $st (call $proxy_grpc_stream (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 1030) (i32.const 4)
                    (i32.const 0) (i32.const 0) (i32.const 48)))
    (call $st (i32.load (i32.const 48)))
    (call $st (call $proxy_grpc_send (i32.load (i32.const 48)) (i32.const 1040) (i32.const 3) (i32.const 0)))
    (call $st (call $proxy_grpc_send (i32.load (i32.const 44)) (i32.const 1040) (i32.const 3) (i32.const 0)))
    (call $st (call $proxy_grpc_cancel (i32.const 77)))
    ;; a service that is not a GrpcService message
    (call $st (call $proxy_grpc_call (i32.const 1050) (i32.const 2) (i32.const 1024) (i32.const 3) (i32.const 1030) (i32.const 4)
                    (i32.const 0) (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 100) (i32.const 44)))
    (i32.const 1))
  (func (export "proxy_on_grpc_receive") (param $c i32) (param $t i32) (param $n i32)
    (call $st (local.get $t))
    (call $st (call $proxy_get_buffer_bytes (i32.const 5) (i32.const 0) (local.get $n) (i32.const 32) (i32.const 36)))
    (call $logret))
  (func (export "proxy_on_grpc_close") (param $c i32) (param $t i32) (param $s i32)
    (call $st (local.get $t)) (call $st (local.get $s)))
"""
)


def test_grpc_calls_and_streams() -> None:
    host = start_plugin(
        plugin(GRPC, data={1024: "svc", 1030: "Meth", 1040: "req", 1050: "\xff\xff"})
    )
    # call token 5, stream token 6; send on a call: BAD_ARGUMENT; cancel of an unknown call
    # (77 & 3 == 1): NOT_FOUND; a service that is not a GrpcService: PARSE_FAILURE
    assert _codes(host) == [0, 5, 0, 6, 0, 2, 1, 4]
    call, stream = host.grpc_calls
    assert (call.service_name, call.method, call.messages) == ("svc", "Meth", [b"req"])
    assert stream.stream and stream.messages == [b"req"]
    host.respond_grpc(call.token, message=b"answer")
    host.respond_grpc(stream.token, close=14)
    assert host.log_messages()[-5:] == ["5", "0", "answer", "6", chr(48 + 14)]


def test_ticks() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (drop (call $proxy_set_tick_period_milliseconds (i32.const 250))) (i32.const 1))
      (func (export "proxy_on_tick") (param $c i32) (call $st (local.get $c)))
    """
    )
    host = start_plugin(plugin(body))
    assert host.tick_period_ms == 250
    host.tick()
    host.tick()
    assert host.log_messages() == ["1", "1"]


def test_foreign_functions() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (call $st (call $proxy_call_foreign_function (i32.const 1024) (i32.const 5) (i32.const 1030) (i32.const 3) (i32.const 32) (i32.const 36)))
        (call $logret)
        (call $st (call $proxy_call_foreign_function (i32.const 1040) (i32.const 4) (i32.const 1030) (i32.const 3) (i32.const 32) (i32.const 36)))
        (i32.const 1))
    """
    )
    host = start_plugin(plugin(body, data={1024: "upper", 1030: "abc", 1040: "nope"}),
                        foreign_functions={"upper": lambda data: data.upper()})  # fmt: skip
    assert host.log_messages() == ["0", "ABC", "1"]


def test_proxy_done_for_root_context() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_done") (param i32) (result i32) (call $st (i32.const 0)) (i32.const 0))
      (func (export "proxy_on_tick") (param i32) (call $st (call $proxy_done)) (call $st (call $proxy_done)))
      (func (export "proxy_on_delete") (param i32) (call $st (i32.const 9)))
    """
    )
    host = start_plugin(plugin(body))
    host.tick()
    host.shutdown()
    host.tick()
    assert _codes(host) == [1, 1, 0, 0, 1, 9]


@pytest.mark.parametrize(
    "call",
    [
        "(call $proxy_get_header_map_pairs (i32.const 0) (i32.const -4) (i32.const 36))",
        "(call $proxy_get_header_map_value (i32.const 0) (i32.const 2147483647) (i32.const 4) (i32.const 32) (i32.const 36))",
        "(call $proxy_add_header_map_value (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 131070) (i32.const 10))",
        "(call $proxy_set_header_map_pairs (i32.const 0) (i32.const 131000) (i32.const 1000))",
        "(call $proxy_get_header_map_size (i32.const 0) (i32.const 131071))",
        "(call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 2))",
        "(call $proxy_send_local_response (i32.const 200) (i32.const 0) (i32.const 0) (i32.const -10) (i32.const 20) (i32.const 0) (i32.const 0) (i32.const 0))",
        "(call $proxy_log (i32.const 2) (i32.const 0) (i32.const -1))",
        "(call $proxy_get_property (i32.const 1024) (i32.const 11) (i32.const 131072) (i32.const 36))",
        "(call $proxy_set_shared_data (i32.const -1) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0))",
        "(call $proxy_define_metric (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const -2))",
        "(call $proxy_call_foreign_function (i32.const -1) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))",
    ],
)
def test_bad_pointers_are_invalid_memory_access(call: str) -> None:
    body = (
        BASIC
        + f"""
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $st {call}) (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, data={1024: "plugin_name"}))
    ex = host.exchange(REQ)
    assert _codes(host) == [6]
    assert host.failed is None and ex.upstream is not None


def test_out_of_phase_calls() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        ;; no stream on the root context: header maps are BAD_ARGUMENT, bodies are empty
        (call $st (call $proxy_get_header_map_size (i32.const 0) (i32.const 44)))
        (call $st (call $proxy_add_header_map_value (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 1024) (i32.const 1)))
        (call $st (call $proxy_get_buffer_status (i32.const 0) (i32.const 44) (i32.const 48)))
        (call $st (i32.load (i32.const 44)))
        (call $st (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1)))
        (call $st (call $proxy_get_buffer_status (i32.const 4) (i32.const 44) (i32.const 48)))
        (call $st (call $proxy_get_buffer_status (i32.const 9) (i32.const 44) (i32.const 48)))
        (call $st (call $proxy_continue_stream (i32.const 0)))
        (call $st (call $proxy_continue_stream (i32.const 7)))
        (call $st (call $proxy_set_effective_context (i32.const 42)))
        (i32.const 1))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        ;; request headers are gone once they continued
        (call $st (call $proxy_get_header_map_size (i32.const 0) (i32.const 44)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, data={1024: "k"}))
    assert _codes(host) == [2, 2, 0, 0, 2, 1, 2, 0, 2, 2]
    host.exchange(REQ)
    assert _codes(host)[-1] == 2


def test_builtin_compress_foreign_functions() -> None:
    import zlib

    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (call $st (call $proxy_call_foreign_function (i32.const 1024) (i32.const 8) (i32.const 1040) (i32.const 10) (i32.const 32) (i32.const 36)))
        (call $st (call $proxy_call_foreign_function (i32.const 1060) (i32.const 10) (i32.load (i32.const 32)) (i32.load (i32.const 36)) (i32.const 32) (i32.const 36)))
        (call $logret)
        (call $st (call $proxy_call_foreign_function (i32.const 1060) (i32.const 10) (i32.const 1040) (i32.const 10) (i32.const 32) (i32.const 36)))
        (i32.const 1))
    """
    )
    data = {1024: "compress", 1040: "aaaaaaaaaa", 1060: "uncompress"}
    host = start_plugin(plugin(body, data=data))
    assert host.log_messages() == ["0", "0", "aaaaaaaaaa", "3"]
    assert zlib.decompress(zlib.compress(b"aaaaaaaaaa")) == b"aaaaaaaaaa"


def test_exchange_answers_callouts_with_a_responder() -> None:
    hdrs = serialize_pairs([(b":method", b"GET"), (b":path", b"/auth"), (b":authority", b"auth")])
    data = {
        1024: "authsvc",
        1040: "ping",
        1050: ":status",
        1096: struct.pack("<I", len(hdrs)),
        1100: hdrs,
    }
    host = start_plugin(plugin(CALLOUT, data=data))
    seen = []

    def responder(callout):
        seen.append(callout.headers.to_dict()[":path"])
        return {":status": "200"}, b"pong"

    ex = host.exchange(REQ, response_headers={":status": "200"}, callout_responder=responder)
    assert seen == ["/auth"]
    assert ex.upstream is not None and ex.client.headers.to_dict()[":status"] == "200"
    assert "pong" in host.log_messages()
    assert [e.envoy_level for e in ex.logs][:1] == ["info"]


def test_empty_buffer_read_writes_null_result() -> None:
    """Envoy 1.40 writes pointer 0 / size 0 for an empty read (AS SDK traps rely on it)."""
    body = (
        BASIC
        + """
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (i32.store (i32.const 32) (i32.const 77)) (i32.store (i32.const 36) (i32.const 77))
        (call $st (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 32) (i32.const 36)))
        (call $st (i32.add (i32.load (i32.const 32)) (i32.load (i32.const 36))))
        (i32.store (i32.const 32) (i32.const 77))
        (call $st (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 99) (i32.const 5) (i32.const 32) (i32.const 36)))
        (call $st (i32.load (i32.const 32)))
        (i32.const 1))
    """
    )
    host = start_plugin(plugin(body), plugin_config=b"abc")
    assert host.log_messages() == ["0", "0", "0", "0"]


def test_property_availability_follows_the_phase() -> None:
    """As Envoy 1.40: request-header attributes vanish once the headers went on (they are back
    in on_log); upstream.* appear with the upstream's answer; request.duration only in on_log."""
    body = (
        BASIC
        + """
      (func $p (param $a i32) (param $n i32)
        (call $st (call $proxy_get_property (local.get $a) (local.get $n) (i32.const 32) (i32.const 36))))
      (func $all
        (call $p (i32.const 1024) (i32.const 12))   ;; request.path
        (call $p (i32.const 1040) (i32.const 16))   ;; upstream.address
        (call $p (i32.const 1060) (i32.const 16))   ;; request.duration
        (call $p (i32.const 1080) (i32.const 14))   ;; response.flags
        (call $p (i32.const 1100) (i32.const 16)))  ;; xds.cluster_name
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $all) (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $all) (i32.const 0))
      (func (export "proxy_on_log") (param i32) (call $all))
    """
    )
    data = {1024: "request\0path", 1040: "upstream\0address", 1060: "request\0duration",
            1080: "response\0flags", 1100: "xds\0cluster_name"}  # fmt: skip
    host = start_plugin(plugin(body, data=data))
    host.exchange(REQ)
    request, response, log = [0, 1, 1, 0, 0], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]
    assert _codes(host) == [*request, *response, *log]
