"""Linking a plugin like cpp-host: host functions for its imports (guarded while the module
starts, traced at trace level), then its exports (memory, allocator, callbacks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wasmtime

from wasm_agent.host import abi, fastcall, hostfn, registry
from wasm_agent.host.abi import AbiVersion, LogLevel
from wasm_agent.host.envoylog import vm_from_host, vm_to_host
from wasm_agent.host.memory import GuestMemory
from wasm_agent.host.vmtypes import LoadError, RestrictedCall

if TYPE_CHECKING:
    from wasm_agent.host.vm import PluginVM

# wasmtime binds a FuncType to the first engine that uses it (using it with another engine
# aborts the process), so types are cached per engine (one engine per limit mode).
_FUNC_TYPES: dict[tuple[str, str, tuple[bool, bool]], wasmtime.FuncType] = {}


def ftype(params: str, results: str, mode: tuple[bool, bool]) -> wasmtime.FuncType:
    key = (params, results, mode)
    ft = _FUNC_TYPES.get(key)
    if ft is None:
        ft = _FUNC_TYPES[key] = abi.func_type(params, results)
    return ft


def sig(ft: wasmtime.FuncType) -> str:
    return abi.envoy_signature(ft)


_GUARDED: dict[tuple[str, Callable], Callable] = {}


def guard(name: str, fn: Callable) -> Callable:
    """``fn`` refusing calls while the module starts (one wrapper per function, reused)."""
    guarded = _GUARDED.get((name, fn))
    if guarded is None:

        def guarded(*args: Any) -> Any:
            if hostfn.Current.vm.starting:
                raise RestrictedCall("restricted_callback: " + name)
            return fn(*args)

        _GUARDED[(name, fn)] = guarded
    return guarded


_TRACED: dict[tuple[str, str, Callable], Callable] = {}


def traced(module: str, name: str, fn: Callable, params: str = "") -> Callable:
    """``fn`` writing Envoy's ``[vm->host]``/``[vm<-host]`` trace lines around each call
    (``params``: the argument types, for their printed width)."""
    key = (module, name, fn)
    traced = _TRACED.get(key)
    if traced is None:

        def traced(*args: Any) -> Any:
            vm = hostfn.Current.vm
            vm.envoy(LogLevel.TRACE, vm_to_host(module, name, args, params))
            result = fn(*args)
            vm.envoy(LogLevel.TRACE, vm_from_host(module, name, result))
            return result

        _TRACED[key] = traced
    return traced


_RESTRICTED: dict[tuple[str, str], Callable] = {}
INTERNAL_FAILURE = 10
_START = frozenset({"_initialize", "_start", "main"})


def restricted(name: str, results: str) -> Callable:
    """What Envoy links for a function outside ``capability_restriction_config``: an error line
    and INTERNAL_FAILURE (recorded from Envoy 1.40)."""
    key = (name, results)
    stub = _RESTRICTED.get(key)
    if stub is None:

        def stub(*_args: Any) -> int | None:
            hostfn.Current.vm.envoy(
                LogLevel.ERROR, f"Attempted call to restricted proxy-wasm capability: {name}"
            )
            return INTERNAL_FAILURE if results else None

        _RESTRICTED[key] = stub
    return stub


def capability_allowed(vm: PluginVM, name: str) -> bool:
    """Is capability ``name`` (a host function or a callback) allowed for ``vm``?"""
    capabilities = vm.options.allowed_capabilities
    return capabilities is None or name in capabilities


def register_host_functions() -> None:
    """Collect the host functions (``registry.host_function_table``) before linking."""
    registry.host_function_table()


def link_imports(vm: PluginVM, module: wasmtime.Module, version: AbiVersion) -> list[Any]:
    """Host functions, memories and tables for ``module``'s imports, as cpp-host links them
    (Envoy's messages for a missing import or a type mismatch)."""
    allowed = abi.linked_names(version)
    imports: list[Any] = []
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        ty = imp.type
        if isinstance(ty, wasmtime.MemoryType):
            vm._imported_memory = wasmtime.Memory(vm.store, ty)
            imports.append(vm._imported_memory)
            continue
        if isinstance(ty, wasmtime.TableType):
            imports.append(wasmtime.Table(vm.store, ty, None))
            continue
        entry = hostfn.HOST_FUNCTIONS.get((imp.module, imp.name or ""))
        known = (imp.module == "env" and imp.name in allowed) or (
            imp.module in hostfn.WASI_MODULES and imp.name in abi.WASI_FUNCTIONS
        )
        if entry is None or not known or not isinstance(ty, wasmtime.FuncType):
            raise LoadError("Failed to load Wasm module due to a missing import: " + where)
        params, results, fn = entry
        host_ty = ftype(params, results, vm._mode)
        if sig(ty) != sig(host_ty):
            raise LoadError(
                "Failed to load Wasm module due to an import type mismatch: "
                f"{where}, want: {sig(ty)}, but host exports: {sig(host_ty)}"
            )
        if not capability_allowed(vm, imp.name or ""):
            fn = restricted(imp.name or "", results)
        if (imp.name or "") not in abi.START_ALLOWED:
            fn = guard(imp.name or "", fn)
        if vm.trace:
            fn = traced(imp.module, imp.name or "", fn, params)
        imports.append(fastcall.host_func(vm.store, host_ty, params, results, fn))
    return imports


def bind_exports(
    vm: PluginVM, module: wasmtime.Module, instance: wasmtime.Instance, version: AbiVersion
) -> None:
    """Find the memory, the allocator and the callbacks (checking their signatures)."""
    exports = instance.exports(vm.store)
    funcs: dict[str, wasmtime.Func] = {}
    memory = vm._imported_memory
    for export in module.exports:
        item = exports[export.name]
        if isinstance(item, wasmtime.Func):
            funcs[export.name] = item
        elif isinstance(item, wasmtime.Memory) and memory is None:
            memory = item
    # callbacks outside an allow-list are never called (start functions always run)
    funcs = {n: f for n, f in funcs.items() if n in _START or capability_allowed(vm, n)}
    vm._funcs = {n: fastcall.ExportCaller(vm.store, f) for n, f in funcs.items()}
    vm._func_types = {n: f.type(vm.store) for n, f in funcs.items()}
    alloc = funcs.get("malloc") or funcs.get("proxy_on_memory_allocate")
    if alloc is None:
        raise LoadError("Wasm module is missing malloc function.")
    vm._alloc_name = "malloc" if "malloc" in funcs else "proxy_on_memory_allocate"
    vm.memory = GuestMemory(vm.store, memory, vm._allocate)
    table = abi.callbacks_for(version)
    table["malloc" if "malloc" in funcs else "proxy_on_memory_allocate"] = ("i", "i")
    vm.callbacks = {}
    for name, (params, results) in table.items():
        fn = vm._funcs.get(name)
        if fn is None:
            continue
        want = ftype(params, results, vm._mode)
        got = vm._func_types[name]
        if sig(got) != sig(want):
            raise LoadError(
                f"Bad function signature for: {name}, want: {sig(want)}, "
                f"but the module exports: {sig(got)}"
            )
        vm.callbacks[name] = fn
