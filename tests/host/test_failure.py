"""Traps, failure policies, runaway plugins, memory caps and isolation between VMs."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

import pytest

from tests.host.wat import BASIC, plugin
from wasm_agent.host.harness import FailurePolicy, LoadError, start_plugin

REQ = {":method": "GET", ":path": "/", ":authority": "h"}

# Traps when the request path is /boom (reads the :path header's first byte after '/').
TRAPPY = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_get_header_map_value (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 32) (i32.const 36)))
    (if (i32.eq (i32.load8_u (i32.add (i32.load (i32.const 32)) (i32.const 1))) (i32.const 98))
      (then unreachable))
    (drop (call $proxy_add_header_map_value (i32.const 0) (i32.const 1040) (i32.const 6) (i32.const 1050) (i32.const 3)))
    (i32.const 0))
"""
)
TRAPPY_DATA = {1024: ":path", 1040: "x-seen", 1050: "yes"}
BOOM = {**REQ, ":path": "/boom"}


def _start(policy: FailurePolicy, **kwargs: object):
    return start_plugin(plugin(TRAPPY, data=TRAPPY_DATA), failure_policy=policy, **kwargs)  # type: ignore[arg-type]


def test_fail_closed() -> None:
    host = _start(FailurePolicy.FAIL_CLOSED)
    assert host.exchange(REQ).upstream.headers.to_dict()["x-seen"] == "yes"
    trapped = host.exchange(BOOM)
    assert trapped.upstream is None
    assert trapped.client.headers.to_dict()[":status"] == "503"
    assert (
        host.failed
        == "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
    )
    later = host.exchange(REQ)
    assert later.upstream is None and later.client.headers.to_dict()[":status"] == "503"


def test_fail_open() -> None:
    host = _start(FailurePolicy.FAIL_OPEN)
    trapped = host.exchange(BOOM)
    assert trapped.client.headers.to_dict()[":status"] == "503"
    later = host.exchange(REQ, response_headers={":status": "200"})
    assert later.upstream is not None and "x-seen" not in later.upstream.headers.to_dict()
    assert later.client.headers.to_dict()[":status"] == "200"


def test_fail_reload_after_backoff() -> None:
    now = [0.0]
    host = _start(FailurePolicy.FAIL_RELOAD, reload_backoff=1.0, monotonic=lambda: now[0])
    old_vm = host.vm
    assert host.exchange(BOOM).client.headers.to_dict()[":status"] == "503"
    now[0] = 0.5  # inside the backoff: still failed closed
    assert host.exchange(REQ).client.headers.to_dict()[":status"] == "503"
    now[0] = 1.5
    ok = host.exchange(REQ)
    assert ok.upstream.headers.to_dict()["x-seen"] == "yes"
    assert host.reloads == 1 and host.vm is not old_vm and host.failed is None


def test_infinite_loop_is_stopped_by_fuel() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (loop $l (br $l)) (i32.const 0))
    """
    )
    host = start_plugin(plugin(body), fuel=2_000_000)
    ex = host.exchange(REQ)
    # Envoy 1.40's V8 never stops it: no answer, no log line (tests/conformance/golden/runaway*)
    assert ex.hung and ex.client is None and ex.upstream is None
    assert ex.outcome == "no response: Envoy would hang this stream"
    assert host.failed is None
    assert host.vm.hung.startswith("Function: proxy_on_request_headers stopped:")
    assert "fuel" in host.vm.hung
    assert not [line for line in host.envoy_log_lines() if "stopped" in line.text]
    assert host.exchange(REQ).hung  # later streams on that worker hang too


def test_unbounded_allocation_is_capped() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (loop $l (br_if $l (call $alloc (i32.const 1048576))))
        (loop $l (br_if $l (call $alloc (i32.const 16))))
        (call $st (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 32) (i32.const 36)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body), memory_limit=4 * 1024 * 1024)
    ex = host.exchange(REQ)
    assert host.vm.memory.size() <= 4 * 1024 * 1024
    # the allocator cannot grow memory: the host answers INVALID_MEMORY_ACCESS, no crash
    assert host.log_messages() == ["6"]
    assert ex.upstream is not None


def test_memory_limit_below_initial_memory_fails_load() -> None:
    with pytest.raises(LoadError, match="Failed to create new Wasm instance"):
        start_plugin(plugin(BASIC, pages=100), memory_limit=1024 * 1024)


def test_two_vms_are_isolated() -> None:
    bad = _start(FailurePolicy.FAIL_CLOSED)
    good = _start(FailurePolicy.FAIL_CLOSED)
    bad.exchange(BOOM)
    assert bad.failed and not good.failed
    assert good.exchange(REQ).upstream.headers.to_dict()["x-seen"] == "yes"


def test_trap_in_allocator_during_host_call() -> None:
    body = (
        BASIC
        + """
      (func (export "malloc") (param i32) (result i32) unreachable)
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $st (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 32) (i32.const 36)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, allocator=None))
    ex = host.exchange(REQ)
    assert host.failed == "Function: malloc failed: Uncaught RuntimeError: unreachable"
    assert ex.client.headers.to_dict()[":status"] == "503"


def test_infinite_loop_is_stopped_by_epoch_deadline() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (loop $l (br $l)) (i32.const 0))
    """
    )
    host = start_plugin(plugin(body), fuel=None, deadline_ms=50)
    assert host.exchange(REQ).outcome == "no response: Envoy would hang this stream"
    assert host.vm.hung.endswith("callback deadline exceeded (runaway plugin stopped)")


def test_vms_in_parallel_threads_stay_apart() -> None:
    """Wasm runs without the GIL; each thread sees only its own VM in host calls."""
    from concurrent.futures import ThreadPoolExecutor

    hosts = [_start(FailurePolicy.FAIL_CLOSED) for _ in range(2)]

    def drive(host) -> int:
        ok = 0
        for _ in range(200):
            ex = host.exchange(REQ)
            ok += ex.upstream is not None and ex.upstream.headers.to_dict().get("x-seen") == "yes"
        return ok

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(drive, hosts)) == [200, 200]
    assert not any(h.failed for h in hosts)
