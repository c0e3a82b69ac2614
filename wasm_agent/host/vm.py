"""One plugin VM: load and link like Envoy, start, call callbacks, trap into a failed state.

Loading follows proxy-wasm-cpp-host ``WasmBase::load/initialize/start/configure`` and reports
Envoy's messages: "Missing or unknown Proxy-Wasm ABI version", "Failed to load Wasm module due to
a missing import: env.proxy_get_log_level", "... due to an import type mismatch: ...",
"Wasm module is missing malloc function.", "Bad function signature for: ...",
"Failed to start base Wasm" (``proxy_on_vm_start`` returned false) and "Failed to configure base
Wasm plugin" (``proxy_on_configure`` returned false).

Every call into the guest goes through ``PluginVM.call``: it sets the current VM/context for host
functions, refuels the store for top-level callbacks, turns any trap (including fuel exhaustion)
into ``failed`` ("Function: NAME failed: ...") and runs deferred actions afterwards, like
cpp-host's ``DeferAfterCallActions``. Each VM has its own Store, so a failure stays inside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import wasmtime

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.host import abi, compile, fastcall
from wasm_agent.host.abi import AbiVersion, LogLevel
from wasm_agent.host.callouts import Callouts
from wasm_agent.host.context import Context
from wasm_agent.host.memory import GuestMemory
from wasm_agent.host.metrics import Metrics
from wasm_agent.host.properties import encode_value, normalize_path
from wasm_agent.host.shared import SharedState
from wasm_agent.host.traps import trap_message

DEFAULT_FUEL = 200_000_000
DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024
MAX_CALL_DEPTH = 32  # guest -> host -> guest nesting (allocator calls, deferred actions)


class LoadError(WasmAgentError):
    """The module cannot be loaded/started; ``str()`` is Envoy's message."""


class RestrictedCall(Exception):
    """A host function other than logging/WASI basics was called while the module started."""


@dataclass
class LogEntry:
    """One log line: level, text (UTF-8, invalid bytes replaced), context (-1: the host)."""

    level: LogLevel
    message: str
    context_id: int
    raw: bytes = b""

    @property
    def envoy_level(self) -> str:
        """The level as Envoy prints it (trace, debug, info, warning, error, critical)."""
        return ("trace", "debug", "info", "warning", "error", "critical")[self.level]


@dataclass
class VmOptions:
    """How to run one plugin (the harness builds this from its keyword arguments)."""

    vm_config: bytes = b""
    plugin_config: bytes = b""
    vm_id: str = ""
    root_id: str = ""
    plugin_name: str = "plugin"
    log_level: LogLevel = LogLevel.INFO  # Envoy's default for the wasm logger
    fuel: int | None = DEFAULT_FUEL  # instructions per top-level callback; None: unlimited
    deadline_ms: float | None = None  # wall-clock limit per top-level callback (epochs)
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    properties: dict[str, bytes] = field(default_factory=dict)
    clock_ns: Callable[[], int] = time.time_ns
    foreign_functions: dict[str, Callable[[bytes], Any]] = field(default_factory=dict)
    clusters: frozenset[str] | None = None  # http_call targets; None accepts any
    cache_dir: Any = None
    # WASI environment (vm_config.environment_variables, merged): environ_get / environ_sizes_get
    environment: dict[str, str] = field(default_factory=dict)


# wasmtime binds a FuncType to the first engine that uses it (using it with another engine
# aborts the process), so types are cached per engine (one engine per limit mode).
_FUNC_TYPES: dict[tuple[str, str, bool], wasmtime.FuncType] = {}


def _ftype(params: str, results: str, mode: tuple[bool, bool]) -> wasmtime.FuncType:
    key = (params, results, mode)
    ft = _FUNC_TYPES.get(key)
    if ft is None:
        ft = _FUNC_TYPES[key] = abi.func_type(params, results)
    return ft


def _sig(ft: wasmtime.FuncType) -> str:
    return abi.envoy_signature(ft)


_GUARDED: dict[str, Callable] = {}


def _guard(name: str, fn: Callable) -> Callable:
    """``fn`` refusing calls while the module starts (one wrapper per name, reused)."""
    guarded = _GUARDED.get(name)
    if guarded is None:

        def guarded(*args: Any) -> Any:
            if abi.Current.vm.starting:
                raise RestrictedCall("restricted_callback: " + name)
            return fn(*args)

        _GUARDED[name] = guarded
    return guarded


def _register_host_functions() -> None:
    """Fill ``abi.HOST_FUNCTIONS`` (kept for callers; ``abi.host_function_table()`` is public)."""
    abi.host_function_table()


class PluginVM:
    """A loaded, started and configured plugin (one root context)."""

    def __init__(self, wasm: bytes, options: VmOptions, shared: SharedState | None = None) -> None:
        self.options = options
        self.shared = shared or SharedState()
        self.logs: list[LogEntry] = []
        self.failed: str | None = None
        self.starting = False
        self.current = 0
        self.effective = 0
        self.stop_next = False
        self.last_stop = False
        self.contexts: dict[int, Context] = {}
        self.root = Context(id=0, root_id=0, kind="vm")  # the VM context until the root exists
        self.metrics: Any = None
        self.callouts = Callouts()
        self.property_overrides = {
            normalize_path(k): encode_value(v) for k, v in options.properties.items()
        }
        self._next_id = 1
        self._depth = 0
        self._deferred: list[Callable[[], None]] = []
        self._imported_memory: wasmtime.Memory | None = None
        self._load(wasm)

    # -- loading ---------------------------------------------------------------------------

    def _load(self, wasm: bytes) -> None:
        self.metrics = Metrics()
        _register_host_functions()
        if wasm[:4] != b"\0asm":
            raise LoadError("Failed to parse corrupted Wasm module")
        fuel = self.options.fuel is not None
        epoch = self.options.deadline_ms is not None
        self._mode = (fuel, epoch)
        self._deadline_ticks = (
            max(1, math.ceil(self.options.deadline_ms / 1000 / compile.EPOCH_TICK_S))
            if epoch
            else 0
        )
        try:
            module = compile.compile_module(wasm, fuel, self.options.cache_dir, epoch)
        except wasmtime.WasmtimeError as exc:
            raise LoadError("Failed to load Wasm bytecode: " + trap_message(exc)) from exc
        exports = {e.name: e.type for e in module.exports}
        version = abi.detect_version(
            {n for n, t in exports.items() if isinstance(t, wasmtime.FuncType)}
        )
        if version is None:
            raise LoadError("Missing or unknown Proxy-Wasm ABI version")
        self.abi_version: AbiVersion = version
        self.store = wasmtime.Store(compile.engine(fuel, epoch))
        self.store.set_limits(memory_size=self.options.memory_limit)
        imports = self._link(module, version)
        self._refill()
        try:
            instance = wasmtime.Instance(self.store, module, imports)
        except Exception as exc:
            raise LoadError("Failed to create new Wasm instance: " + trap_message(exc)) from exc
        self._bind(module, instance, version)
        self._start()

    def _link(self, module: wasmtime.Module, version: AbiVersion) -> list[Any]:
        allowed = abi.linked_names(version)
        imports: list[Any] = []
        for imp in module.imports:
            where = f"{imp.module}.{imp.name}"
            ty = imp.type
            if isinstance(ty, wasmtime.MemoryType):
                self._imported_memory = wasmtime.Memory(self.store, ty)
                imports.append(self._imported_memory)
                continue
            if isinstance(ty, wasmtime.TableType):
                imports.append(wasmtime.Table(self.store, ty, None))
                continue
            entry = abi.HOST_FUNCTIONS.get((imp.module, imp.name or ""))
            known = (imp.module == "env" and imp.name in allowed) or (
                imp.module in abi.WASI_MODULES and imp.name in abi.WASI_FUNCTIONS
            )
            if entry is None or not known or not isinstance(ty, wasmtime.FuncType):
                raise LoadError("Failed to load Wasm module due to a missing import: " + where)
            params, results, fn = entry
            host_ty = _ftype(params, results, self._mode)
            if _sig(ty) != _sig(host_ty):
                raise LoadError(
                    "Failed to load Wasm module due to an import type mismatch: "
                    f"{where}, want: {_sig(ty)}, but host exports: {_sig(host_ty)}"
                )
            if (imp.name or "") not in abi.START_ALLOWED:
                fn = _guard(imp.name or "", fn)
            imports.append(fastcall.host_func(self.store, host_ty, params, results, fn))
        return imports

    def _bind(
        self, module: wasmtime.Module, instance: wasmtime.Instance, version: AbiVersion
    ) -> None:
        exports = instance.exports(self.store)
        funcs: dict[str, wasmtime.Func] = {}
        memory = self._imported_memory
        for export in module.exports:
            item = exports[export.name]
            if isinstance(item, wasmtime.Func):
                funcs[export.name] = item
            elif isinstance(item, wasmtime.Memory) and memory is None:
                memory = item
        self._funcs = {n: fastcall.ExportCaller(self.store, f) for n, f in funcs.items()}
        self._func_types = {n: f.type(self.store) for n, f in funcs.items()}
        alloc = funcs.get("malloc") or funcs.get("proxy_on_memory_allocate")
        if alloc is None:
            raise LoadError("Wasm module is missing malloc function.")
        self._alloc_name = "malloc" if "malloc" in funcs else "proxy_on_memory_allocate"
        self.memory = GuestMemory(self.store, memory, self._allocate)
        table = abi.callbacks_for(version)
        table["malloc" if "malloc" in funcs else "proxy_on_memory_allocate"] = ("i", "i")
        self.callbacks: dict[str, fastcall.ExportCaller] = {}
        for name, (params, results) in table.items():
            fn = self._funcs.get(name)
            if fn is None:
                continue
            want = _ftype(params, results, self._mode)
            got = self._func_types[name]
            if _sig(got) != _sig(want):
                raise LoadError(
                    f"Bad function signature for: {name}, want: {_sig(want)}, "
                    f"but the module exports: {_sig(got)}"
                )
            self.callbacks[name] = fn

    def _start(self) -> None:
        funcs = self._funcs
        self.starting = True
        try:
            if "_initialize" in funcs:
                self._raw_call("_initialize", funcs["_initialize"], ())
                main = funcs.get("main")
                if main is not None and _sig(self._func_types["main"]) == "i32 i32 -> i32":
                    self._raw_call("main", main, (0, 0))
            elif "_start" in funcs:
                self._raw_call("_start", funcs["_start"], ())
        finally:
            self.starting = False
        if self.failed:
            raise LoadError(self.failed)
        root = self._new_root()
        started = self.call_cb("proxy_on_vm_start", root, root.id, len(self.options.vm_config))
        if self.failed:
            raise LoadError(self.failed)
        if started is not None and started == 0:
            raise LoadError("Failed to start base Wasm")
        self.configure(self.options.plugin_config)

    def configure(self, plugin_config: bytes) -> None:
        """Run ``proxy_on_configure`` on the root context (raise LoadError on false/trap)."""
        root = self.root
        root.plugin_config = plugin_config
        try:
            ok = self.call_cb("proxy_on_configure", root, root.id, len(plugin_config))
        finally:
            root.plugin_config = None
        if self.failed:
            raise LoadError(self.failed)
        if ok is not None and ok == 0:
            raise LoadError("Failed to configure base Wasm plugin")

    def _new_root(self) -> Context:
        root = Context(id=self._alloc_id(), root_id=0, kind="root")
        self.root = root
        self.contexts[root.id] = root
        self.call_cb("proxy_on_context_create", root, root.id, 0)
        root.created = True
        return root

    # -- contexts ----------------------------------------------------------------------------

    def _alloc_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def new_stream_context(self, kind: str, stream: Any) -> Context:
        """Create a stream context and tell the plugin (``proxy_on_context_create``)."""
        ctx = Context(id=self._alloc_id(), root_id=self.root.id, kind=kind, stream=stream)
        self.contexts[ctx.id] = ctx
        self.call_cb("proxy_on_context_create", ctx, ctx.id, self.root.id)
        ctx.created = True
        return ctx

    def context(self) -> Context:
        """The context host functions act on (the effective context if one was set)."""
        cid = self.effective or self.current
        ctx = self.contexts.get(cid)
        return ctx if ctx is not None else self.root

    def delete_context(self, ctx: Context) -> None:
        self.contexts.pop(ctx.id, None)

    def shutdown(self) -> None:
        """Stop the plugin: root ``proxy_on_done``; on_delete now or after ``proxy_done``."""
        root = self.root
        done = self.call_cb("proxy_on_done", root, root.id)
        if done is not None and done == 0:
            root.done_pending = True
            return
        self.finish_root(root)

    def finish_root(self, root: Context) -> None:
        self.call_cb("proxy_on_delete", root, root.id)
        self.delete_context(root)

    # -- calls -------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.callbacks

    def call_cb(self, name: str, ctx: Context, *args: int) -> int | None:
        """Call callback ``name`` on ``ctx``; None if not exported or the VM failed."""
        fn = self.callbacks.get(name)
        if fn is None or self.failed:
            return None
        prev_cur, prev_eff = self.current, self.effective
        self.current, self.effective = ctx.id, 0
        try:
            return self._raw_call(name, fn, args)
        finally:
            self.current, self.effective = prev_cur, prev_eff

    def _raw_call(self, name: str, fn: fastcall.ExportCaller, args: tuple) -> Any:
        if self._depth >= MAX_CALL_DEPTH:
            self.fail(f"Function: {name} failed: host call depth exceeded")
            return None
        prev_vm = abi.Current.vm
        abi.Current.vm = self
        top = self._depth == 0
        self._depth += 1
        if top:
            self.stop_next = False
            self._refill()
        try:
            return fn(*args)
        except Exception as exc:
            self.fail(f"Function: {name} failed: {trap_message(exc)}")
            return None
        finally:
            self._depth -= 1
            abi.Current.vm = prev_vm
            if top:
                stop = self.stop_next
                self._run_deferred()
                self.last_stop = stop

    def _refill(self) -> None:
        """A fresh budget for one top-level callback: fuel and/or an epoch deadline."""
        if self.options.fuel is not None:
            self.store.set_fuel(self.options.fuel)
        if self._deadline_ticks:
            self.store.set_epoch_deadline(self._deadline_ticks)

    def _allocate(self, size: int) -> int | None:
        fn = self.callbacks.get(self._alloc_name) or self._funcs.get(self._alloc_name)
        if self.failed or fn is None:
            return None
        result = self._raw_call(self._alloc_name, fn, (size,))
        return result or None

    def defer(self, action: Callable[[], None]) -> None:
        """Run ``action`` after the outermost guest call returns."""
        self._deferred.append(action)
        if self._depth == 0:
            self._run_deferred()

    def _run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    def fail(self, message: str) -> None:
        if self.failed is None:
            self.failed = message
            self.log(LogLevel.CRITICAL, message, host=True)

    def log(self, level: LogLevel, message: str | bytes, host: bool = False) -> None:
        raw = message if isinstance(message, bytes) else message.encode()
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        cid = -1 if host else self.context().id
        self.logs.append(LogEntry(LogLevel(level), text, cid, raw))
