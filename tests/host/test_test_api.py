"""The test API items of issue 15: the front-end model, the upstream and gRPC responders, named
addresses/cluster/route with per-phase availability, Envoy-format lines apart from host notes,
per-request logs across a FAIL_RELOAD reload, VM and root-context counts, trace lines."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

from tests.host.wat import BASIC, plugin
from tests.support.plugins import plugin as built
from wasm_agent.host.harness import FailurePolicy, LogLevel, start_plugin

REQ = {":method": "GET", ":path": "/", ":authority": "svc"}

# Logs every request header pair it sees, then the request body sizes and end-of-stream flags.
SEEN = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 32) (i32.const 36)))
    (call $logret) (i32.const 0))
  (func (export "proxy_on_request_body") (param $c i32) (param $n i32) (param $e i32) (result i32)
    (call $st (local.get $n)) (call $st (local.get $e)) (i32.const 0))
"""
)


def _pairs(raw: bytes) -> list[tuple[str, str]]:
    from wasm_agent.host.maps import deserialize_pairs

    return [(k.decode(), v.decode()) for k, v in deserialize_pairs(raw)]


def test_front_end_model_is_on_by_default() -> None:
    host = start_plugin(plugin(SEEN))
    ex = host.exchange({"host": "svc", ":path": "/p", ":method": "POST"}, b"abc",
                       upstream=lambda received: ({":status": "200"}, b""))  # fmt: skip
    seen = _pairs(host.log_bytes()[-5])
    assert seen == [
        (":authority", "svc"), (":path", "/p"), (":method", "POST"), (":scheme", "http"),
        ("content-length", "3"), ("x-forwarded-proto", "http"),
        ("x-request-id", "00000000-0000-4000-8000-000000000001"),
    ]  # fmt: skip
    assert host.log_messages()[-4:] == ["3", "0", "0", "1"]  # data frame, then empty end frame
    assert ex.client is not None and ex.client.headers is not None
    pairs = ex.client.headers.pairs()
    assert pairs[2][0] == "date" and pairs[2][1].endswith(" GMT")  # HCM's, after the filters
    assert pairs[:2] + pairs[3:] == [
        (":status", "200"), ("x-envoy-upstream-service-time", "1"), ("server", "envoy"),
        ("content-length", "0"),
    ]  # fmt: skip


def test_front_end_model_can_be_turned_off() -> None:
    host = start_plugin(plugin(SEEN))
    ex = host.exchange(REQ, b"abc", {":status": "200"}, frontend=False)
    assert _pairs(host.log_bytes()[-3]) == [
        (":method", "GET"),
        (":path", "/"),
        (":authority", "svc"),
    ]
    assert host.log_messages()[-2:] == ["3", "1"]
    assert ex.client is not None and ex.client.headers is not None
    assert ex.client.headers.pairs() == [(":status", "200")]


def test_upstream_responder_sees_what_the_upstream_received() -> None:
    host = start_plugin(built("wat/add_header"))
    got = []

    def upstream(received):  # type: ignore[no-untyped-def]
        got.append(received.headers.to_dict())
        return [(":status", "201"), ("x-up", "1")], [b"he", b"llo"], {"grpc-status": "0"}

    ex = host.exchange({**REQ, "x-wat-req": "old"}, upstream=upstream)
    assert got[0]["x-wat-req"] == "from-wat"  # the plugin's change reached the upstream
    assert ex.client is not None and bytes(ex.client.body) == b"hello"
    assert ex.client.headers is not None and ex.client.headers.to_dict()["x-wat"] == "hello"
    assert ex.client.trailers is not None and ex.client.trailers.to_dict() == {"grpc-status": "0"}


GRPC = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $st (call $proxy_grpc_call (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 1030) (i32.const 4)
                    (i32.const 0) (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 100) (i32.const 44)))
    (i32.const 1))
  (func (export "proxy_on_grpc_receive") (param $c i32) (param $t i32) (param $n i32)
    (drop (call $proxy_get_buffer_bytes (i32.const 5) (i32.const 0) (local.get $n) (i32.const 32) (i32.const 36)))
    (call $logret)
    (drop (call $proxy_set_effective_context (i32.const 2)))  ;; the stream that made the call
    (drop (call $proxy_continue_stream (i32.const 0))))
"""
)


def test_grpc_responder_answers_calls_as_they_are_made() -> None:
    host = start_plugin(plugin(GRPC, data={1024: "svc", 1030: "Meth", 1040: "req"}))
    asked = []

    def peer(call):  # type: ignore[no-untyped-def]
        asked.append((call.service_name, call.method, call.messages))
        return b"answer"

    ex = host.exchange(REQ, grpc_responder=peer, upstream=lambda r: ({":status": "200"}, b""))
    assert asked == [("svc", "Meth", [b"req"])]
    assert "answer" in host.log_messages()
    assert ex.upstream is not None and ex.client is not None  # resumed by the plugin


PROPS = (
    BASIC
    + """
  (func $p (param $a i32) (param $n i32)
    (if (i32.eqz (call $proxy_get_property (local.get $a) (local.get $n) (i32.const 32) (i32.const 36)))
      (then (call $logret)) (else (call $st (i32.const 1)))))
  (func $all
    (call $p (i32.const 1024) (i32.const 16))   ;; upstream.address
    (call $p (i32.const 1050) (i32.const 14))   ;; source.address
    (call $p (i32.const 1070) (i32.const 16))   ;; xds.cluster_name
    (call $p (i32.const 1090) (i32.const 14)))  ;; xds.route_name
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $all) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $all) (i32.const 0))
"""
)
PROPS_DATA = {
    1024: "upstream\0address", 1050: "source\0address", 1070: "xds\0cluster_name",
    1090: "xds\0route_name",
}  # fmt: skip


def test_named_addresses_keep_per_phase_availability() -> None:
    host = start_plugin(
        plugin(PROPS, data=PROPS_DATA), source_address="10.0.0.1:4321",
        upstream_address="10.0.0.9:8080", cluster_name="backend", route_name="r1",
    )  # fmt: skip
    host.exchange(REQ, upstream=lambda r: ({":status": "200"}, b""))
    request, response = host.log_messages()[-8:-4], host.log_messages()[-4:]
    assert request == ["1", "10.0.0.1:4321", "backend", "r1"]  # no upstream host picked yet
    assert response == ["10.0.0.9:8080", "10.0.0.1:4321", "backend", "r1"]


def test_bad_address_is_a_clear_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="upstream_address must be 'ip:port', got 'nope'"):
        start_plugin(plugin(PROPS, data=PROPS_DATA), upstream_address="nope")


TRAP = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $logmem (i32.const 1024) (i32.const 4))
    (if (i32.eqz (call $proxy_get_header_map_value (i32.const 0) (i32.const 1030) (i32.const 6) (i32.const 32) (i32.const 36)))
      (then unreachable))
    (i32.const 0))
"""
)


def test_envoy_lines_and_host_notes_are_separate() -> None:
    host = start_plugin(plugin(TRAP, data={1024: "seen", 1030: "x-trap"}), plugin_name="p",
                        root_id="r", vm_id="v")  # fmt: skip
    host.exchange({**REQ, "x-trap": "1"})
    lines = [(line.level, line.text) for line in host.envoy_log_lines("info")]
    assert ("info", "wasm log p r v: seen") in lines
    trap = [text for level, text in lines if level == "error"]
    assert trap[0].startswith(
        "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable\n"
        "Proxy-Wasm plugin in-VM backtrace:\n  0:  0x"
    )
    assert host.notes == [
        "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
    ]
    assert "seen" not in host.notes and all("wasm log" not in note for note in host.notes)


def test_per_request_logs_are_stable_across_a_reload() -> None:
    now = [0.0]
    host = start_plugin(plugin(TRAP, data={1024: "seen", 1030: "x-trap"}),
                        failure_policy=FailurePolicy.FAIL_RELOAD, monotonic=lambda: now[0])  # fmt: skip
    first = host.exchange({**REQ, "x-trap": "1"})
    now[0] = 5.0
    second = host.exchange(REQ)
    assert host.reloads == 1
    assert [e.message for e in first.logs if e.context_id >= 0] == ["seen"]
    assert [e.message for e in second.logs] == ["seen"]  # not the new VM's startup


def test_vm_and_root_context_counts_follow_concurrency() -> None:
    assert start_plugin(built("wat/golden")).vm_count == 4  # Envoy --concurrency 2
    host = start_plugin(built("wat/golden"), concurrency=1)
    assert (host.vm_count, host.root_context_count, len(host.vms)) == (3, 3, 2)
    starts = [line for line in host.envoy_log_lines() if line.text.endswith("vm_start 1")]
    assert [line.thread for line in starts] == ["main", "main", "worker-0"]
    host.shutdown()
    done = [line.thread for line in host.envoy_log_lines() if line.text.endswith(": done 1")]
    assert done == ["worker-0", "main"]
    assert start_plugin(built("wat/golden"), concurrency=0).vm_count == 1


def test_trace_lines_in_envoy_format() -> None:
    host = start_plugin(built("wat/golden"), log_level=LogLevel.TRACE, concurrency=0)
    host.exchange(REQ, upstream=lambda r: ({":status": "200"}, b""))
    texts = [line.text for line in host.envoy_log_lines()]
    assert "[host->vm] proxy_on_vm_start(1, 0)" in texts
    assert "[host<-vm] proxy_on_context_create return: void" in texts
    assert "[vm->host] env.proxy_get_header_map_value(0, 64, 5, 16, 20)" in texts
    assert "[vm<-host] env.proxy_get_header_map_value return: 0" in texts
    quiet = start_plugin(built("wat/golden"), log_level=LogLevel.TRACE, trace_calls=False)
    assert not [line for line in quiet.envoy_log_lines() if line.text.startswith("[")]


TCP_CLOSE = (
    BASIC
    + """
  (func (export "proxy_on_upstream_connection_close") (param $c i32) (param $peer i32)
    (call $st (local.get $peer)))
  (func (export "proxy_on_downstream_connection_close") (param $c i32) (param $peer i32)
    (call $st (i32.add (i32.const 10) (local.get $peer))))
"""
)


def test_tcp_close_semantics_are_settable() -> None:
    from wasm_agent.host.abi import PeerType

    host = start_plugin(plugin(TCP_CLOSE))
    auto = host.tcp_connection()
    auto.send_upstream_data(b"x", end_stream=True)  # Envoy closes the upstream: peer UNKNOWN
    assert host.log_messages()[-1:] == ["0"]
    manual = host.tcp_connection(upstream_close_on_end=False)
    manual.send_upstream_data(b"x", end_stream=True)
    assert host.log_messages()[-1:] == ["0"]  # nothing new
    manual.close_upstream(PeerType.LOCAL)
    manual.close_downstream(PeerType.REMOTE)
    assert host.log_messages()[-2:] == ["1", chr(48 + 12)]
