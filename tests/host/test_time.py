"""``HostedPlugin.advance(seconds)``: ticks and callout timeouts fire in time order, clocks move,
the reload back-off counts virtual time."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

import struct

import pytest

from tests.host.wat import BASIC, plugin
from wasm_agent.host.harness import FailurePolicy, start_plugin
from wasm_agent.host.maps import serialize_pairs

REQ = {":method": "GET", ":path": "/", ":authority": "svc"}
TIMED = (
    BASIC
    + """
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 1000))) (i32.const 1))
  (func (export "proxy_on_tick") (param i32) (call $logmem (i32.const 1060) (i32.const 4)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_http_call (i32.const 1024) (i32.const 7) (i32.const 1100) (i32.load (i32.const 1096))
                    (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1500) (i32.const 44)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param $c i32) (param $t i32) (param $h i32) (param $b i32) (param $tr i32)
    (drop (call $proxy_get_header_map_value (i32.const 6) (i32.const 1050) (i32.const 7) (i32.const 32) (i32.const 36)))
    (call $logret))
"""
)


def _timed() -> bytes:
    hdrs = serialize_pairs([(b":method", b"GET"), (b":path", b"/auth"), (b":authority", b"auth")])
    data = {
        1024: "authsvc",
        1050: ":status",
        1060: "tick",
        1096: struct.pack("<I", len(hdrs)),
        1100: hdrs,
    }
    return plugin(TIMED, data=data)


def test_ticks_and_callout_timeouts_fire_in_time_order() -> None:
    host = start_plugin(_timed(), clock_ns=lambda: 0)
    host.exchange(REQ, complete=False)
    assert host.advance(0.9) == 0
    fired = host.advance(1.7)  # t = 2.6: ticks at 1 and 2 on each of 3 VMs, the timeout at 1.5
    assert fired == 7
    assert host.log_messages()[-3:] == ["tick", "504", "tick"]
    assert all(c.answered for c in host.http_callouts)


def test_clock_moves_with_advance() -> None:
    host = start_plugin(_timed(), clock_ns=lambda: 1_000)
    host.advance(2.5)
    assert host.clock.clock_ns() == 1_000 + 2_500_000_000


def test_reload_back_off_counts_virtual_time() -> None:
    trap = (
        BASIC
        + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
"""
    )
    host = start_plugin(plugin(trap), failure_policy=FailurePolicy.FAIL_RELOAD, reload_backoff=10,
                        monotonic=lambda: 0.0)  # fmt: skip
    host.exchange(REQ)
    host.exchange(REQ)
    assert host.reloads == 0
    host.advance(10)
    host.exchange(REQ)
    assert host.reloads == 1


def test_time_does_not_go_back() -> None:
    with pytest.raises(ValueError, match="time only moves forward"):
        start_plugin(_timed()).advance(-1)
