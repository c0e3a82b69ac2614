"""Capability allow-lists (Envoy's ``capability_restriction_config``, as recorded from Envoy
1.40): a host function outside the list logs an error and answers INTERNAL_FAILURE (10), a
callback outside it is never called."""

from __future__ import annotations

from tests.support.plugins import plugin
from wasm_agent.host.harness import start_plugin

REQ = {":method": "GET", ":path": "/local", ":authority": "svc"}
BASE = {
    "proxy_log", "proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure",
    "proxy_on_request_headers", "proxy_on_response_headers", "proxy_on_memory_allocate",
    "proxy_get_header_map_value", "proxy_add_header_map_value",
}  # fmt: skip


def test_restricted_host_function_fails_as_envoy_does() -> None:
    host = start_plugin(plugin("wat/golden"), allowed_capabilities=BASE, concurrency=0,
                        trace_calls=True, log_level=0)  # fmt: skip
    ex = host.exchange(REQ, upstream=lambda r: ({":status": "200"}, b""))
    texts = [(line.level, line.text) for line in host.envoy_log_lines()]
    assert (
        "error",
        "Attempted call to restricted proxy-wasm capability: proxy_send_local_response",
    ) in texts
    assert ("trace", "[vm<-host] env.proxy_send_local_response return: 10") in texts
    assert ex.local_response is None  # the reply was refused; the request stays stopped
    assert not any("proxy_on_log" in text for _, text in texts)  # not allowed: never called


def test_everything_allowed_by_default() -> None:
    ex = start_plugin(plugin("wat/golden")).exchange(REQ)
    assert ex.local_response is not None and ex.local_response.status == 403


def test_allocator_outside_the_list_is_missing() -> None:
    import pytest

    from wasm_agent.host.harness import LoadError

    with pytest.raises(LoadError, match=r"Wasm module is missing malloc function\."):
        start_plugin(plugin("wat/golden"), allowed_capabilities=BASE - {"proxy_on_memory_allocate"})
