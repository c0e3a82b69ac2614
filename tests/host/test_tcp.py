"""Network (TCP) filters: new connection, data both ways, close events, failure."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

from tests.host.wat import BASIC, plugin
from wasm_agent.host.harness import FailurePolicy, start_plugin

TCP = (
    BASIC
    + """
  (func (export "proxy_on_new_connection") (param $c i32) (result i32)
    (call $st (local.get $c)) (i32.const 0))
  (func (export "proxy_on_downstream_data") (param $c i32) (param $n i32) (param $end i32) (result i32)
    (call $st (local.get $n))
    ;; hold data until at least 4 bytes, then prepend ">"
    (if (i32.lt_u (local.get $n) (i32.const 4)) (then (return (i32.const 1))))
    (drop (call $proxy_set_buffer_bytes (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_upstream_data") (param $c i32) (param $n i32) (param $end i32) (result i32)
    (if (i32.eq (local.get $n) (i32.const 4)) (then unreachable))
    (call $st (call $proxy_get_property (i32.const 1030) (i32.const 13) (i32.const 32) (i32.const 36)))
    (i32.const 0))
  (func (export "proxy_on_downstream_connection_close") (param $c i32) (param $p i32)
    (call $logmem (i32.const 1050) (i32.const 4)) (call $st (local.get $p)))
  (func (export "proxy_on_upstream_connection_close") (param $c i32) (param $p i32)
    (call $logmem (i32.const 1060) (i32.const 4)))
  (func (export "proxy_on_done") (param i32) (result i32) (call $logmem (i32.const 1070) (i32.const 4)) (i32.const 1))
  (func (export "proxy_on_log") (param i32) (call $logmem (i32.const 1080) (i32.const 3)))
  (func (export "proxy_on_delete") (param i32) (call $logmem (i32.const 1090) (i32.const 6)))
"""
)
DATA = {
    1024: ">",
    1030: "connection\0id",
    1050: "down",
    1060: "up!!",
    1070: "done",
    1080: "log",
    1090: "delete",
}


def test_tcp_connection_life() -> None:
    host = start_plugin(plugin(TCP, data=DATA))
    conn = host.tcp_connection()
    assert conn.send_downstream_data(b"ab") == "STOP_ITERATION"
    assert conn.send_downstream_data(b"cd") == "CONTINUE"
    assert bytes(conn.upstream_received) == b">abcd"
    assert conn.send_upstream_data(b"xyz", end_stream=True) == "CONTINUE"
    assert bytes(conn.downstream_received) == b"xyz"
    conn.close_downstream()
    assert host.log_messages() == ["2", "2", "4", "0", "up!!", "down", "2", "done", "log", "delete"]
    assert conn.actions[0] == ("new_connection", "CONTINUE")


def test_tcp_trap_closes_connection_fail_closed() -> None:
    host = start_plugin(plugin(TCP, data=DATA))
    conn = host.tcp_connection()
    assert conn.send_upstream_data(b"boom") == "failed"
    assert conn.closed and host.failed
    assert host.tcp_connection().closed


def test_tcp_fail_open_skips_plugin() -> None:
    host = start_plugin(plugin(TCP, data=DATA), failure_policy=FailurePolicy.FAIL_OPEN)
    host.tcp_connection().send_upstream_data(b"boom")
    later = host.tcp_connection()
    assert not later.closed
    assert later.send_downstream_data(b"ab") == "CONTINUE"
    assert bytes(later.upstream_received) == b"ab"


def test_continue_downstream_releases_held_data() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_tick") (param i32)
        (drop (call $proxy_set_effective_context (i32.const 2)))
        (call $st (call $proxy_continue_stream (i32.const 2))))
    """
    )
    host = start_plugin(plugin(body))
    conn = host.tcp_connection()
    assert conn.send_downstream_data(b"held") == "STOP_ITERATION"
    assert bytes(conn.upstream_received) == b""
    host.tick()
    assert host.log_messages() == ["0"]
    assert bytes(conn.upstream_received) == b"held"
