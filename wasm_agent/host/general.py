"""Logging, time, status, contexts, ticks, foreign functions and configuration host calls."""

from __future__ import annotations

import zlib

from wasm_agent.host.abi import LogLevel, Status
from wasm_agent.host.hostfn import Current, host

_M = 0xFFFFFFFF


def _uncompress(data: bytes) -> tuple[Status, bytes]:
    try:
        return Status.OK, zlib.decompress(data)
    except zlib.error:
        return Status.SERIALIZATION_FAILURE, b""


# Envoy's own foreign functions that need no Envoy internals (foreign.cc); tests may add or
# override any name with ``foreign_functions=``.
BUILTIN_FOREIGN = {
    "compress": lambda data: zlib.compress(data),
    "uncompress": _uncompress,
    "clear_route_cache": lambda _data: b"",
}


@host("proxy_log", "iii")
def proxy_log(level: int, ptr: int, size: int) -> int:
    vm = Current.vm
    if (level & _M) > LogLevel.CRITICAL:
        return Status.BAD_ARGUMENT
    message = vm.memory.read(ptr, size)
    if message is None:
        return Status.INVALID_MEMORY_ACCESS
    if level >= vm.options.log_level:
        vm.log(LogLevel(level), message)
    return Status.OK


@host("proxy_get_log_level", "i")
def get_log_level(level_p: int) -> int:
    vm = Current.vm
    ok = vm.memory.set_u32(level_p, int(vm.options.log_level))
    return Status.OK if ok else Status.INVALID_MEMORY_ACCESS


@host("proxy_get_status", "iii")
def get_status(code_p: int, msg_pp: int, msg_size_p: int) -> int:
    vm = Current.vm
    code, message = vm.context().status
    if not vm.memory.set_u32(code_p, code):
        return Status.INVALID_MEMORY_ACCESS
    if not vm.memory.copy_out(message, msg_pp, msg_size_p):
        return Status.INVALID_MEMORY_ACCESS
    return Status.OK


@host("proxy_get_current_time_nanoseconds", "i")
def get_current_time_nanoseconds(result_p: int) -> int:
    vm = Current.vm
    ok = vm.memory.set_u64(result_p, vm.options.clock_ns())
    return Status.OK if ok else Status.INVALID_MEMORY_ACCESS


@host("proxy_set_tick_period_milliseconds", "i")
def set_tick_period_milliseconds(period: int) -> int:
    vm = Current.vm
    vm.root.tick_period_ms = period & _M
    return Status.OK


@host("proxy_set_effective_context", "i")
def set_effective_context(context_id: int) -> int:
    vm = Current.vm
    cid = context_id & _M
    if cid not in vm.contexts:
        return Status.BAD_ARGUMENT
    vm.effective = cid
    return Status.OK


@host("proxy_done", "")
def done() -> int:
    vm = Current.vm
    ctx = vm.context()
    if not ctx.done_pending:
        return Status.NOT_FOUND
    ctx.done_pending = False
    vm.defer(lambda: vm.finish_root(ctx))
    return Status.OK


@host("proxy_call_foreign_function", "iiiiii")
def call_foreign_function(
    name_ptr: int, name_size: int, args_ptr: int, args_size: int, res_pp: int, res_size_p: int
) -> int:
    vm = Current.vm
    name = vm.memory.read(name_ptr, name_size)
    if name is None:
        return Status.INVALID_MEMORY_ACCESS
    args = vm.memory.read(args_ptr, args_size)
    if args is None:
        return Status.INVALID_MEMORY_ACCESS
    fname = name.decode("utf-8", "replace")
    fn = vm.options.foreign_functions.get(fname) or BUILTIN_FOREIGN.get(fname)
    if fn is None:
        return Status.NOT_FOUND
    outcome = fn(args)
    status, result = outcome if isinstance(outcome, tuple) else (Status.OK, outcome or b"")
    address = 0
    if res_pp and result:
        address = vm.memory.alloc(bytes(result)) or 0
    if res_pp and not vm.memory.set_u32(res_pp, address):
        return Status.INVALID_MEMORY_ACCESS
    if res_size_p and not vm.memory.set_u32(res_size_p, len(result)):
        return Status.INVALID_MEMORY_ACCESS
    return int(status)


@host("proxy_get_configuration", "ii")
def get_configuration(value_pp: int, size_p: int) -> int:
    vm = Current.vm
    ok = vm.memory.copy_out(vm.options.plugin_config, value_pp, size_p)
    return Status.OK if ok else Status.INVALID_MEMORY_ACCESS


@host("proxy_clear_route_cache", "")
def clear_route_cache() -> int:
    return Status.OK


@host("pthread_equal", "ii")
def pthread_equal(left: int, right: int) -> int:
    return int(left == right)


@host("emscripten_notify_memory_growth", "i", "")
def emscripten_notify_memory_growth(_index: int) -> None:
    return None
