"""Differences between ABI v0.1.0, v0.2.0 and v0.2.1 as a plugin sees them."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

from tests.host.wat import BASIC, plugin
from wasm_agent.host.harness import start_plugin

REQ = {":method": "GET", ":path": "/", ":authority": "h"}


def test_v010_configuration_and_continue_request() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (call $st (call $proxy_get_configuration (i32.const 32) (i32.const 36)))
        (call $logret) (i32.const 1))
      (func (export "proxy_on_request_headers") (param $c i32) (param $n i32) (result i32)
        (call $st (local.get $n)) (i32.const 1))
      (func (export "proxy_on_tick") (param i32)
        (drop (call $proxy_set_effective_context (i32.const 2)))
        (call $st (call $proxy_continue_request))
        (call $st (call $proxy_clear_route_cache)))
    """
    )
    host = start_plugin(plugin(body, version="0_1_0"), plugin_config="cfg")
    s = host.http_stream()
    assert (
        s.send_request_headers({**REQ, "x": "1"}, end_stream=True)
        == "STOP_ALL_ITERATION_AND_WATERMARK"
    )
    host.tick()
    assert s.upstream.complete
    assert host.log_messages() == ["0", "cfg", "4", "0", "0"]


def test_v020_has_continue_stream_but_no_log_level() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $st (call $proxy_continue_stream (i32.const 0))) (i32.const 1))
    """
    )
    host = start_plugin(plugin(body, version="0_2_0"))
    s = host.http_stream()
    s.send_request_headers(REQ, end_stream=True)
    assert host.log_messages() == ["0"]
    assert s.upstream.complete  # continue ran after the callback returned


def test_v021_log_level_and_foreign_function_callback_lookup() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (call $st (call $proxy_get_log_level (i32.const 44))) (call $st (i32.load (i32.const 44)))
        (i32.const 1))
      (func (export "proxy_on_foreign_function") (param i32 i32 i32))
    """
    )
    host = start_plugin(plugin(body, version="0_2_1"))
    assert host.log_messages() == ["0", "2"]  # info, Envoy's default
    assert host.vm.has("proxy_on_foreign_function")
    host010 = start_plugin(
        plugin(
            body.replace(
                "(call $st (call $proxy_get_log_level (i32.const 44))) (call $st (i32.load (i32.const 44)))",
                "",
            ),
            version="0_1_0",
        )
    )
    assert not host010.vm.has("proxy_on_foreign_function")
