"""Fast calls across the wasm boundary with wasmtime's "unchecked" C API.

``wasmtime.Func.__call__`` and the default host trampoline re-derive the function type and box
every value on each call (the bulk of a naive host's 160-490 us per request). Every function
crossing this host's boundary takes and returns only i32/i64, so we pass raw values instead:
``wasmtime_func_call_unchecked`` for guest exports and ``wasmtime_func_new_unchecked`` for host
functions. Python exceptions raised by host functions become traps and are re-raised from the
outer call, like wasmtime-py does. Falls back to the public API if the bindings lack these.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _func

_RAW = ffi.wasmtime_val_raw
_CALL: Any = getattr(ffi, "_wasmtime_func_call_unchecked", None) or getattr(
    ffi, "wasmtime_func_call_unchecked", None
)
_TRAP_PTR = ctypes.POINTER(ffi.wasm_trap_t)
FAST = all(
    hasattr(ffi, n)
    for n in ("wasmtime_func_call_unchecked", "wasmtime_func_new_unchecked", "wasmtime_val_raw")
) and hasattr(_func, "maybe_raise_last_exn")


def _raise_pending(trap: Any, error: Any) -> None:
    if error:
        _func.maybe_raise_last_exn()
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        exc = wasmtime.Trap._from_ptr(trap)
        _func.maybe_raise_last_exn()
        raise exc


class ExportCaller:
    """Call one guest export with int arguments; returns its i32 result or None."""

    __slots__ = ("_ctx", "_func", "_has_result", "_ref", "_size", "_store")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        ty = func.type(store)
        self._store = store
        self._func = func
        self._has_result = bool(ty.results)
        self._size = max(len(ty.params), len(ty.results), 1)
        self._ctx = store._context()
        self._ref = ctypes.byref(func._func)

    def __call__(self, *args: int) -> int | None:
        if not FAST:
            return self._func(self._store, *args)
        arr = (_RAW * self._size)()
        for i, value in enumerate(args):
            arr[i].i32 = value
        trap = _TRAP_PTR()
        error = _CALL(self._ctx, self._ref, arr, self._size, ctypes.byref(trap))
        if error or trap:
            _raise_pending(trap, error)
        return arr[0].i32 if self._has_result else None


def _noop_finalizer(_env: Any) -> None:
    return None


_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_noop_finalizer)
_CALLBACKS: dict[tuple[Any, str, str], Any] = {}


def _make_callback(fn: Callable[..., Any], params: str, results: str) -> Any:
    wide = tuple(i for i, kind in enumerate(params) if kind == "I")
    count = len(params)
    has_result = bool(results)

    def callback(_env: Any, _caller: Any, args: Any, _n: int) -> int:
        try:
            values = [args[i].i32 for i in range(count)]
            for i in wide:
                values[i] = args[i].i64
            result = fn(*values)
            if has_result:
                args[0].i32 = int(result)
            return 0
        except BaseException as exc:
            _func.LAST_EXCEPTION = exc  # type: ignore[assignment]  # re-raised after the call
            trap = wasmtime.Trap("python exception")._consume()
            return ctypes.cast(trap, ctypes.c_void_p).value or 0

    return ffi.wasmtime_func_unchecked_callback_t(callback)


def host_func(
    store: wasmtime.Store, ty: wasmtime.FuncType, params: str, results: str, fn: Callable
) -> wasmtime.Func:
    """A host function for ``store`` calling ``fn`` with raw ints (callbacks built once)."""
    if not FAST:
        return wasmtime.Func(store, ty, fn)
    key = (fn, params, results)
    callback = _CALLBACKS.get(key)
    if callback is None:
        callback = _CALLBACKS[key] = _make_callback(fn, params, results)
    raw = ffi.wasmtime_func_t()
    ffi.wasmtime_func_new_unchecked(
        store._context(), ty.ptr(), callback, None, _FINALIZER, ctypes.byref(raw)
    )
    return wasmtime.Func._from_raw(raw)
