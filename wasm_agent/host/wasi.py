"""The WASI subset Envoy serves (cpp-host ``FOR_ALL_WASI_FUNCTIONS``), under both
``wasi_snapshot_preview1`` and ``wasi_unstable``.

stdout/stderr writes become logs at info/error (one trailing newline dropped); the environment
is ``VmOptions.environment`` (Envoy's ``vm_config.environment_variables``), one ``KEY=VALUE``
string plus a NUL per variable; arguments are empty; only the realtime clock exists;
``proc_exit`` logs and returns (the module usually traps right after); reading and opening files
fails; ``fd_seek``/``fd_close`` succeed doing nothing. Functions Envoy does not serve (e.g.
``sched_yield``, ``poll_oneoff``) fail the load as missing imports.
"""

from __future__ import annotations

import os
import struct

from wasm_agent.host.abi import LogLevel
from wasm_agent.host.hostfn import Current, host

ESUCCESS = 0
EBADF = 8
EFAULT = 21
ENOENT = 44
ENOSYS = 52
ENOTSUP = 58
_M = 0xFFFFFFFF


@host("fd_write", "iiii", module="wasi")
def fd_write(fd: int, iovs: int, iovs_len: int, nwritten_p: int) -> int:
    vm = Current.vm
    if fd == 1:
        level = LogLevel.INFO
    elif fd == 2:
        level = LogLevel.ERROR
    else:
        return EBADF
    mem = vm.memory
    count = iovs_len & _M
    if mem.read(iovs, count * 8) is None:
        return EFAULT
    parts = []
    for i in range(count):
        vec = mem.read(iovs + i * 8, 8)
        if vec is None:
            return EFAULT
        buf, buf_len = struct.unpack("<II", vec)
        if buf_len:
            chunk = mem.read(buf, buf_len)
            if chunk is None:
                return EFAULT
            parts.append(chunk)
    text = b"".join(parts)
    written = len(text)
    if written:
        if text.endswith(b"\n"):
            text = text[:-1]
        vm.log(level, text)
    if not mem.set_u32(nwritten_p, written):
        return EFAULT
    return ESUCCESS


@host("fd_read", "iiii", module="wasi")
def fd_read(fd: int, iovs: int, iovs_len: int, nread_p: int) -> int:
    return ENOSYS


@host("fd_seek", "iIii", module="wasi")
def fd_seek(fd: int, offset: int, whence: int, newoffset_p: int) -> int:
    Current.vm.log(LogLevel.TRACE, "wasi_unstable fd_seek", host=True)
    return ESUCCESS


@host("fd_close", "i", module="wasi")
def fd_close(fd: int) -> int:
    Current.vm.log(LogLevel.TRACE, "wasi_unstable fd_close", host=True)
    return ESUCCESS


@host("fd_fdstat_get", "ii", module="wasi")
def fd_fdstat_get(fd: int, stat_p: int) -> int:
    if fd not in (1, 2):
        return EBADF
    Current.vm.memory.write(stat_p, struct.pack("<QQQ", 0, 64, 0))
    return ESUCCESS


def _environment() -> list[bytes]:
    """The variables as cpp-host writes them: ``KEY=VALUE`` plus a NUL each."""
    env = Current.vm.options.environment
    return [f"{key}={value}".encode() + b"\0" for key, value in env.items()]


@host("environ_get", "ii", module="wasi")
def environ_get(environ_p: int, buf_p: int) -> int:
    # cpp-host: for each variable, the pointer then the string (EFAULT stops part way)
    mem = Current.vm.memory
    environ_p, buf_p = environ_p & _M, buf_p & _M
    for entry in _environment():
        if not mem.set_u32(environ_p, buf_p) or not mem.write(buf_p, entry):
            return EFAULT
        buf_p += len(entry)
        environ_p += 4
    return ESUCCESS


@host("environ_sizes_get", "ii", module="wasi")
def environ_sizes_get(count_p: int, size_p: int) -> int:
    mem = Current.vm.memory
    entries = _environment()
    if not mem.set_u32(count_p, len(entries)):
        return EFAULT
    if not mem.set_u32(size_p, sum(len(e) for e in entries)):
        return EFAULT
    return ESUCCESS


@host("args_get", "ii", module="wasi")
def args_get(argv_p: int, buf_p: int) -> int:
    return ESUCCESS


@host("args_sizes_get", "ii", module="wasi")
def args_sizes_get(argc_p: int, size_p: int) -> int:
    mem = Current.vm.memory
    if not mem.set_u32(argc_p, 0) or not mem.set_u32(size_p, 0):
        return EFAULT
    return ESUCCESS


@host("clock_time_get", "iIi", module="wasi")
def clock_time_get(clock_id: int, precision: int, time_p: int) -> int:
    if clock_id != 0:
        return ENOTSUP
    vm = Current.vm
    return ESUCCESS if vm.memory.set_u64(time_p, vm.options.clock_ns()) else EFAULT


@host("random_get", "ii", module="wasi")
def random_get(buf_p: int, buf_len: int) -> int:
    data = os.urandom(buf_len & _M) if (buf_len & _M) <= 1 << 26 else None
    if data is None or not Current.vm.memory.write(buf_p, data):
        return EFAULT
    return ESUCCESS


@host("proc_exit", "i", "", module="wasi")
def proc_exit(code: int) -> None:
    vm = Current.vm
    vm.log(LogLevel.TRACE, "wasi_unstable proc_exit", host=True)
    vm.envoy(LogLevel.TRACE, "wasi_unstable proc_exit")  # Envoy 1.40 logs it at trace


@host("path_open", "iiiiiIIii", module="wasi")
def path_open(*_args: int) -> int:
    return ENOENT


@host("fd_prestat_get", "ii", module="wasi")
def fd_prestat_get(fd: int, buf_p: int) -> int:
    return EBADF


@host("fd_prestat_dir_name", "iii", module="wasi")
def fd_prestat_dir_name(fd: int, path_p: int, path_len: int) -> int:
    return ENOSYS
