"""Guest linear memory: bounds-checked reads/writes and results returned through the allocator.

Every access is checked like cpp-host's ``getMemory``/``setWord`` (``pointer + size`` must not
pass the current memory size); a failed check is reported to the caller, which answers
``INVALID_MEMORY_ACCESS`` (or WASI ``EFAULT``) instead of touching host memory. Reads and writes
go through ``Memory.data_ptr`` with ctypes (about 2x cheaper than ``Memory.read``).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

import wasmtime
from wasmtime import _ffi as ffi

_U32 = struct.Struct("<I")

# Private prototypes (own restype; the shared ones in wasmtime's bindings stay untouched):
# the address of linear memory as an int, and its size, without wrapper frames.
try:
    _CTX, _MEM = ctypes.POINTER(ffi.wasmtime_context_t), ctypes.POINTER(ffi.wasmtime_memory_t)
    _DATA = ctypes.CFUNCTYPE(ctypes.c_void_p, _CTX, _MEM)(("wasmtime_memory_data", ffi.dll))
    _SIZE = ctypes.CFUNCTYPE(ctypes.c_size_t, _CTX, _MEM)(("wasmtime_memory_data_size", ffi.dll))
except (AttributeError, TypeError):  # pragma: no cover - other wasmtime-py layouts
    _DATA = _SIZE = None  # type: ignore[assignment]
_U64 = struct.Struct("<Q")


class GuestMemory:
    """Access to one instance's exported ``memory``, plus the guest allocator."""

    def __init__(
        self,
        store: wasmtime.Store,
        memory: wasmtime.Memory | None,
        allocate: Callable[[int], int | None],
    ) -> None:
        self._store = store
        self._memory = memory
        self._allocate = allocate
        self._fast = _DATA is not None and memory is not None
        if self._fast:
            self._ctx = store._context()
            self._ref = ctypes.byref(memory._memory)  # type: ignore[union-attr]

    def _base(self, ptr: int, size: int) -> int | None:
        if ptr < 0 or size < 0 or self._memory is None:
            return None
        if self._fast:
            if ptr + size > _SIZE(self._ctx, self._ref):
                return None
            return (_DATA(self._ctx, self._ref) or 0) + ptr
        mem = self._memory
        if ptr + size > mem.data_len(self._store):
            return None
        return ctypes.addressof(mem.data_ptr(self._store).contents) + ptr

    def size(self) -> int:
        return 0 if self._memory is None else self._memory.data_len(self._store)

    def read(self, ptr: int, size: int) -> bytes | None:
        """``size`` bytes at ``ptr``, or None when out of bounds."""
        if size == 0:
            return b"" if self._base(ptr, 0) is not None else None
        addr = self._base(ptr, size)
        return None if addr is None else ctypes.string_at(addr, size)

    def write(self, ptr: int, data: bytes) -> bool:
        addr = self._base(ptr, len(data))
        if addr is None:
            return False
        if data:
            ctypes.memmove(addr, data, len(data))
        return True

    def read_u32(self, ptr: int) -> int | None:
        raw = self.read(ptr, 4)
        return None if raw is None else _U32.unpack(raw)[0]

    def set_u32(self, ptr: int, value: int) -> bool:
        return self.write(ptr, _U32.pack(value & 0xFFFFFFFF))

    def set_u64(self, ptr: int, value: int) -> bool:
        return self.write(ptr, _U64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def alloc(self, data: bytes) -> int | None:
        """Copy ``data`` into memory obtained from the guest allocator; None on failure."""
        ptr = self._allocate(len(data))
        if not ptr or not self.write(ptr, data):
            return None
        return ptr

    def copy_out(self, data: bytes, ptr_ptr: int, size_ptr: int) -> bool:
        """cpp-host ``copyToPointerSize``: allocate, copy, write pointer and size words.

        Empty data writes pointer 0 and size 0 without allocating.
        """
        ptr = 0
        if data:
            got = self.alloc(data)
            if got is None:
                return False
            ptr = got
        return self.set_u32(ptr_ptr, ptr) and self.set_u32(size_ptr, len(data))
