"""The reference host's guest-memory paths: host functions called with fuzzer-chosen pointers
and lengths (``wasm_agent.host``: ``memory.GuestMemory`` and every ``@host`` function).

A WAT plugin reads a call spec from its own memory and calls one host function with it from
the callback the spec names. Input layout (little-endian, zero-padded)::

    0      host function (index into FUNCTIONS, modulo)
    1      phase: request headers, request body, response headers, on_tick (root), on_log
    2      bit 0: the guest allocator returns the value at bytes 52..55 instead of memory
    4..51  twelve u32 arguments
    52..55 the allocator's answer in that mode
    56..   payload copied to guest memory at 1024 (header pairs, names, values ...)

Expected: the call returns a status (INVALID_MEMORY_ACCESS for bad pointers) and the plugin
keeps working. A Python exception inside a host function (it would surface as a trap), a VM
failure, a crash of the process or a broken plugin afterwards is a finding. Nothing may escape
``fuzz_one`` (``ALLOWED`` is empty).
"""

from __future__ import annotations

import struct
from typing import Any

from tests.host.wat import SIGS, WASI_SIGS, plugin
from wasm_agent.host import abi, vm
from wasm_agent.host.abi import Status
from wasm_agent.host.harness import start_plugin
from wasm_agent.host.shared import SharedState

ALLOWED: tuple[type[BaseException], ...] = ()
MAX_LEN = 2048

_NOT_LINKED = {  # ABI 0.1.0-only names: a 0.2.1 plugin importing them does not load
    "proxy_get_configuration",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_clear_route_cache",
}
FUNCTIONS: list[tuple[str, str, str, str]] = [  # (wat name, import module, params, results)
    (name, "env", params, results)
    for name, (params, results) in sorted(SIGS.items())
    if name not in _NOT_LINKED
] + [
    (f"wasi_{name}", "wasi_snapshot_preview1", params, results)
    for name, (params, results) in sorted(WASI_SIGS.items())
    if name != "sched_yield"  # not linked by Envoy either
]
PHASES = ("request_headers", "request_body", "response_headers", "tick", "log")

SPEC, ARGS, RESULT, DONE, ALLOC_VALUE, PAYLOAD = 256, 260, 320, 324, 328, 1024
CANARY_AT, CANARY = 4096, b"fuzz-canary"
RESTART_EVERY = 512
_UNSET = 0xFFFFFFFF
_REQUEST = {":method": "POST", ":path": "/fuzz", ":authority": "fuzz.test", "x-a": "1"}


def _call(index: int, params: str, results: str, wat_name: str) -> str:
    args = []
    for j, kind in enumerate(params.split()):
        load = f"(i32.load (i32.const {ARGS + 4 * j}))"
        args.append(load if kind == "i32" else f"(i64.extend_i32_u {load})")
    call = f"(call ${wat_name} {' '.join(args)})"
    store = f"(i32.store (i32.const {RESULT}) {call})" if results else f"{call}"
    return (
        f"(if (i32.eq (local.get $sel) (i32.const {index})) "
        f"(then {store} (i32.store (i32.const {DONE}) (i32.const 1)) (return)))"
    )


def _module() -> bytes:
    calls = "\n    ".join(_call(i, p, r, w) for i, (w, _m, p, r) in enumerate(FUNCTIONS))

    def when(phase: int) -> str:
        phase_is = f"(i32.eq (i32.load8_u (i32.const {SPEC + 1})) (i32.const {phase}))"
        return f"(if {phase_is} (then (call $dispatch)))"

    stream_cb = "(param i32 i32 i32) (result i32)"

    body = f"""
  (func $dispatch (local $sel i32)
    (if (i32.load (i32.const {DONE})) (then (return)))
    (i32.store (i32.const {DONE}) (i32.const 2))
    (local.set $sel (i32.load8_u (i32.const {SPEC})))
    {calls})
  (func $fuzz_alloc (export "malloc") (param $n i32) (result i32)
    (if (i32.and (i32.load8_u (i32.const {SPEC + 2})) (i32.const 1))
      (then (return (i32.load (i32.const {ALLOC_VALUE})))))
    (call $alloc (local.get $n)))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") {stream_cb} {when(0)} (i32.const 0))
  (func (export "proxy_on_request_body") {stream_cb} {when(1)} (i32.const 0))
  (func (export "proxy_on_response_headers") {stream_cb} {when(2)} (i32.const 0))
  (func (export "proxy_on_tick") (param i32) {when(3)})
  (func (export "proxy_on_log") (param i32) {when(4)})
"""
    return plugin(body, allocator=None, pages=2, max_pages=32)


class HostFunctionRaised(AssertionError):
    """A host function raised a Python exception (the guest would see a trap)."""


_raised: list[BaseException] = []


def _instrument_host_functions() -> None:
    """Record exceptions raised inside host functions (they would only show as a trap)."""
    vm._register_host_functions()
    for key, (params, results, fn) in list(abi.HOST_FUNCTIONS.items()):
        if getattr(fn, "_fuzz_wrapped", False):
            continue

        def wrapped(*args: Any, _fn=fn) -> Any:
            try:
                return _fn(*args)
            except BaseException as exc:
                _raised.append(exc)
                raise

        wrapped._fuzz_wrapped = True  # type: ignore[attr-defined]
        abi.HOST_FUNCTIONS[key] = (params, results, wrapped)


_instrument_host_functions()
_WASM = _module()
_state: dict[str, Any] = {"host": None, "runs": 0}


def _host():
    host = _state["host"]
    if host is None or _state["runs"] % RESTART_EVERY == 0:
        host = _state["host"] = start_plugin(
            _WASM, plugin_config=b"{}", vm_id="fuzz", shared=SharedState()
        )
        _check_alive(host)
    return host


def _write_spec(host, header: bytes, args: bytes, alloc_value: int, payload: bytes) -> None:
    memory = host.vm.memory
    assert memory.write(SPEC, header) and memory.write(ARGS, args)
    assert memory.write(RESULT, struct.pack("<IIII", _UNSET, 0, alloc_value, 0))
    assert memory.write(PAYLOAD, payload)


def _drive(host, phase: int) -> None:
    if phase == 3:
        host.tick()
        return
    stream = host.http_stream()
    stream.send_request_headers(_REQUEST, end_stream=False)
    stream.send_request_body(b"request-body", end_stream=True)
    stream.send_response_headers({":status": "200", "content-type": "text/plain"})
    stream.send_response_body(b"response-body", end_stream=True)
    stream.complete()


def _check_alive(host) -> None:
    """A fresh stream runs and ``proxy_log`` of a known string is logged."""
    logs_before = len(host.vm.logs)
    args = struct.pack("<12I", 2, CANARY_AT, len(CANARY), *([0] * 9))
    index = next(i for i, f in enumerate(FUNCTIONS) if f[0] == "proxy_log")
    assert host.vm.memory.write(CANARY_AT, CANARY)
    _write_spec(host, bytes([index, 0, 0, 0]), args, 0, b"")
    _drive(host, 0)
    assert host.failed is None, host.failed
    assert host.vm.memory.read_u32(RESULT) == Status.OK
    assert [e.raw for e in host.vm.logs[logs_before:]] == [CANARY], host.vm.logs[logs_before:]
    del host.vm.logs[:]


def fuzz_one(data: bytes) -> None:
    """Run one host-function call described by ``data`` (see the module docstring)."""
    raw = data.ljust(56, b"\0")
    index = raw[0] % len(FUNCTIONS)
    phase = raw[1] % len(PHASES)
    header = bytes([index, phase, raw[2] & 1, 0])
    (alloc_value,) = struct.unpack_from("<I", raw, 52)
    host = _host()
    _state["runs"] += 1
    _raised.clear()
    _write_spec(host, header, raw[4:52], alloc_value, raw[56:MAX_LEN])
    _drive(host, phase)
    if _raised:
        exc = _raised[0]
        raise HostFunctionRaised(f"{FUNCTIONS[index][0]} raised {exc!r}") from exc
    assert host.failed is None, f"{FUNCTIONS[index][0]}: {host.failed}"
    done = host.vm.memory.read_u32(DONE)
    result = host.vm.memory.read_u32(RESULT)
    if done and FUNCTIONS[index][3] and result != _UNSET:
        if FUNCTIONS[index][1] == "env":
            assert result in set(Status), (FUNCTIONS[index][0], result)
        else:
            assert result <= 76, (FUNCTIONS[index][0], result)  # a WASI errno
    if _state["runs"] % 64 == 0:
        _check_alive(host)
    del host.vm.logs[:]
