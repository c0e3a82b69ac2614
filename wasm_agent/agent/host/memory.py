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

_U32 = struct.Struct("<I")
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

    def _base(self, ptr: int, size: int) -> int | None:
        mem = self._memory
        if mem is None or ptr < 0 or size < 0:
            return None
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
