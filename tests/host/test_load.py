"""Loading like Envoy: ABI version, allocator, per-version imports, WASI, start, configure."""

# ruff: noqa: E501  (inline WAT reads better unwrapped)

from __future__ import annotations

import pytest
import wasmtime

from tests.host.wat import BASIC, plugin
from wasm_agent.host.harness import LoadError, start_plugin


def _load_error(wasm: bytes, **kwargs: object) -> str:
    with pytest.raises(LoadError) as info:
        start_plugin(wasm, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_not_wasm_is_corrupted() -> None:
    assert _load_error(b"hello") == "Failed to parse corrupted Wasm module"


def test_missing_abi_version() -> None:
    assert _load_error(plugin(BASIC, version="")) == "Missing or unknown Proxy-Wasm ABI version"


def test_unknown_abi_version_marker() -> None:
    wasm = plugin(BASIC + '(func (export "proxy_abi_version_0_3_0"))', version="")
    assert _load_error(wasm) == "Missing or unknown Proxy-Wasm ABI version"


@pytest.mark.parametrize("version", ["0_1_0", "0_2_0", "0_2_1"])
def test_version_detected(version: str) -> None:
    host = start_plugin(plugin(BASIC, version=version))
    assert host.abi_version == version.replace("_", ".")


def test_missing_allocator() -> None:
    assert _load_error(plugin(BASIC, allocator=None)) == "Wasm module is missing malloc function."


def test_malloc_accepted_as_allocator() -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (drop (call $proxy_get_property (i32.const 1024) (i32.const 11) (i32.const 32) (i32.const 36)))
        (call $logret) (i32.const 1))
    """
    )
    host = start_plugin(plugin(body, allocator="malloc", data={1024: "plugin_name"}))
    assert host.log_messages() == ["plugin"]


@pytest.mark.parametrize(
    ("version", "call", "missing"),
    [
        ("0_2_0", "(drop (call $proxy_get_log_level (i32.const 0)))", "env.proxy_get_log_level"),
        ("0_1_0", "(drop (call $proxy_get_log_level (i32.const 0)))", "env.proxy_get_log_level"),
        ("0_1_0", "(drop (call $proxy_continue_stream (i32.const 0)))", "env.proxy_continue_stream"),
        ("0_1_0", "(drop (call $proxy_close_stream (i32.const 0)))", "env.proxy_close_stream"),
        ("0_2_1", "(drop (call $proxy_continue_request))", "env.proxy_continue_request"),
        ("0_2_0", "(drop (call $proxy_get_configuration (i32.const 0) (i32.const 0)))",
         "env.proxy_get_configuration"),
        ("0_2_1", "(drop (call $proxy_clear_route_cache))", "env.proxy_clear_route_cache"),
    ],
)  # fmt: skip
def test_import_missing_in_declared_version(version: str, call: str, missing: str) -> None:
    wasm = plugin(BASIC + f'(func (export "unused") {call})', version=version)
    assert _load_error(wasm) == f"Failed to load Wasm module due to a missing import: {missing}"


def test_unknown_env_import() -> None:
    wasm = plugin(BASIC, extra='(import "env" "proxy_nope" (func (param i32) (result i32)))')
    assert _load_error(wasm) == "Failed to load Wasm module due to a missing import: env.proxy_nope"


def test_wasi_function_envoy_does_not_serve() -> None:
    wasm = plugin(BASIC + '(func (export "y") (drop (call $wasi_sched_yield)))')
    expected = (
        "Failed to load Wasm module due to a missing import: wasi_snapshot_preview1.sched_yield"
    )
    assert _load_error(wasm) == expected


def test_import_type_mismatch() -> None:
    wasm = plugin(BASIC, extra='(import "env" "proxy_done" (func (param i32) (result i32)))')
    assert _load_error(wasm) == (
        "Failed to load Wasm module due to an import type mismatch: env.proxy_done, "
        "want: i32 -> i32, but host exports: void -> i32"
    )


def test_bad_callback_signature() -> None:
    body = '(func (export "proxy_on_request_headers") (param i32 i32) (result i32) (i32.const 0))'
    assert _load_error(plugin(body, version="0_2_1")) == (
        "Bad function signature for: proxy_on_request_headers, want: i32 i32 i32 -> i32, "
        "but the module exports: i32 i32 -> i32"
    )
    start_plugin(plugin(body, version="0_1_0"))  # two parameters are right for 0.1.0


def test_vm_start_false_fails() -> None:
    body = '(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 0))'
    assert _load_error(plugin(body)) == "Failed to start base Wasm"


def test_configure_false_fails() -> None:
    body = '(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))'
    assert _load_error(plugin(body)) == "Failed to configure base Wasm plugin"


def test_trap_while_starting() -> None:
    wasm = plugin('(func (export "_start") unreachable)')
    assert _load_error(wasm) == "Function: _start failed: Uncaught RuntimeError: unreachable"


def test_start_order_and_restricted_calls() -> None:
    body = """
      (func (export "_initialize") (call $logmem (i32.const 1024) (i32.const 4)))
      (func (export "main") (param i32 i32) (result i32)
        (call $logmem (i32.const 1030) (i32.const 4)) (i32.const 0))
      (func (export "_start") (call $logmem (i32.const 1040) (i32.const 5)))
      (func (export "proxy_on_context_create") (param i32 i32) (call $logmem (i32.const 1050) (i32.const 6)))
      (func (export "proxy_on_vm_start") (param $c i32) (param $n i32) (result i32)
        (call $logmem (i32.const 1060) (i32.const 5)) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (call $logmem (i32.const 1070) (i32.const 9)) (i32.const 1))
    """
    data = {1024: "init", 1030: "main", 1040: "start", 1050: "create", 1060: "vmcfg",
            1070: "configure"}  # fmt: skip
    host = start_plugin(plugin(body, data=data))
    assert host.log_messages() == ["init", "main", "create", "vmcfg", "configure"]
    restricted = (
        '(func (export "_start") (drop (call $proxy_set_tick_period_milliseconds (i32.const 1))))'
    )
    assert "restricted_callback" in _load_error(plugin(restricted))


def test_configurations_reach_the_plugin() -> None:
    body = (
        BASIC
        + """
      (func $dump (param $buf i32)
        (call $st (call $proxy_get_buffer_bytes (local.get $buf) (i32.const 0) (i32.const -1)
                       (i32.const 32) (i32.const 36)))
        (call $logret))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (call $dump (i32.const 6)) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) (call $dump (i32.const 7)) (i32.const 1))
      (func (export "proxy_on_tick") (param i32)
        (call $st (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (i32.const -1)
                       (i32.const 32) (i32.const 36))))
    """
    )
    host = start_plugin(plugin(body), vm_config=b"vm-cfg", plugin_config=b"plugin-cfg")
    assert host.log_messages() == ["0", "vm-cfg", "0", "plugin-cfg"]
    host.tick()  # the plugin configuration is gone after proxy_on_configure (NOT_FOUND)
    assert host.log_messages()[-1] == "1"


@pytest.mark.parametrize("module", ["wasi_snapshot_preview1", "wasi_unstable"])
def test_wasi_under_both_names(module: str) -> None:
    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (i32.store (i32.const 200) (i32.const 1024)) (i32.store (i32.const 204) (i32.const 6))
        (call $st (call $wasi_fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 208)))
        (call $st (call $wasi_fd_write (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 208)))
        (call $st (call $wasi_fd_write (i32.const 7) (i32.const 200) (i32.const 1) (i32.const 208)))
        (call $st (call $wasi_fd_write (i32.const 1) (i32.const 99999999) (i32.const 1) (i32.const 208)))
        (call $st (call $wasi_environ_sizes_get (i32.const 300) (i32.const 304)))
        (call $st (i32.add (i32.load (i32.const 300)) (i32.load (i32.const 304))))
        (call $st (call $wasi_clock_time_get (i32.const 0) (i64.const 0) (i32.const 312)))
        (call $st (i32.wrap_i64 (i64.div_u (i64.load (i32.const 312)) (i64.const 1000000000000000000))))
        (call $st (call $wasi_clock_time_get (i32.const 1) (i64.const 0) (i32.const 312)))
        (call $st (call $wasi_random_get (i32.const 400) (i32.const 16)))
        (call $st (call $wasi_fd_read (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
        (call $wasi_proc_exit (i32.const 3))
        (i32.const 1))
    """
    )
    host = start_plugin(
        plugin(body, data={1024: "hello\n"}, wasi_module=module),
        clock_ns=lambda: 1_700_000_000_000_000_000,
    )
    levels = [(e.level.name, e.message) for e in host.logs if e.message == "hello"]
    assert levels == [("INFO", "hello"), ("ERROR", "hello")]
    codes = [ord(m) - 48 for m in host.log_messages() if len(m) == 1]
    # fd_write ok, ok, EBADF, EFAULT; environ ok, 0 entries; clock ok, seconds/1e18 = 1;
    # monotonic clock ENOTSUP; random ok; fd_read ENOSYS
    assert codes == [0, 0, 8, 21, 0, 0, 0, 1, 58, 0, 52]
    assert "wasi_unstable proc_exit" in [e.message for e in host.logs]


def test_compile_cache_hits_disk(tmp_path) -> None:
    from wasm_agent.host import compile

    wasm = plugin(BASIC + '(func (export "distinct_for_cache_test"))')
    start_plugin(wasm, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.cwasm"))) == 1
    compile.forget_in_memory()
    before = dict(compile.STATS)
    start_plugin(wasm, cache_dir=tmp_path)
    assert compile.STATS["disk_hits"] == before["disk_hits"] + 1
    assert compile.STATS["compiles"] == before["compiles"]
    assert wasmtime.Module.validate(wasmtime.Engine(), wasm) is None
