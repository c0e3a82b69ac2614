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
from collections.abc import Callable
from typing import Any

import wasmtime

from wasm_agent.host import abi, compile, fastcall, hostfn, link
from wasm_agent.host.abi import AbiVersion, LogLevel
from wasm_agent.host.callouts import Callouts
from wasm_agent.host.context import Context
from wasm_agent.host.envoylog import (
    LEVELS,
    EnvoyLine,
    backtrace,
    host_from_vm,
    host_to_vm,
    log_prefix,
    plugin_log,
)
from wasm_agent.host.memory import GuestMemory
from wasm_agent.host.metrics import Metrics
from wasm_agent.host.properties import encode_value, normalize_path
from wasm_agent.host.shared import SharedState
from wasm_agent.host.traps import trap_message
from wasm_agent.host.vmtypes import (  # noqa: F401 - re-exported (the VM's public names)
    DEFAULT_FUEL,
    DEFAULT_MEMORY_LIMIT,
    HANG,
    LoadError,
    LogEntry,
    RestrictedCall,
    VmOptions,
)

# Older callers (tests/fuzz) fill the host-function table through this name.
_register_host_functions = link.register_host_functions
MAX_CALL_DEPTH = 32  # guest -> host -> guest nesting (allocator calls, deferred actions)
RUNAWAY_TRAPS = frozenset({"OUT_OF_FUEL", "INTERRUPT"})


class PluginVM:
    """A loaded, started and configured plugin (one root context)."""

    def __init__(
        self,
        wasm: bytes,
        options: VmOptions,
        shared: SharedState | None = None,
        *,
        thread: str = "worker-0",
        envoy_lines: list[EnvoyLine] | None = None,
        base: bool = False,
    ) -> None:
        self.options = options
        self.base = base  # Envoy's base Wasm: instantiated and started, no root context
        self.shared = shared or SharedState()
        self.wasm = wasm
        self.thread = thread  # the Envoy thread this VM stands for ("main", "worker-0", ...)
        self.logs: list[LogEntry] = []
        self.envoy_lines: list[EnvoyLine] = envoy_lines if envoy_lines is not None else []
        self.trace = (
            options.log_level <= LogLevel.TRACE
            if options.trace_calls is None
            else options.trace_calls
        )
        self._prefixes = (
            log_prefix(options.root_id, options.vm_id),
            log_prefix(options.plugin_name, options.root_id, options.vm_id),
        )
        self.failed: str | None = None
        self.hung: str | None = None  # a runaway callback stopped by fuel/deadline
        self.loaded = False  # started and configured (traps then carry the backtrace)
        self.map_seed = 0  # advances per map-valued property read (Envoy's per-table seed)
        self.starting = False
        self.current = 0
        self.effective = 0
        self.stop_next = False
        self.last_stop = False
        self.contexts: dict[int, Context] = {}
        self.root = Context(id=0, root_id=0, kind="vm")  # the VM context until the root exists
        self.metrics = Metrics(self.shared.metrics)
        self.callouts = Callouts()
        self.property_overrides = {
            normalize_path(k): encode_value(v) for k, v in options.properties.items()
        }
        self._next_id = 1
        self._depth = 0
        self._deferred: list[Callable[[], None]] = []
        self._imported_memory: wasmtime.Memory | None = None
        # set by link.bind_exports
        self.memory: GuestMemory
        self.callbacks: dict[str, fastcall.ExportCaller] = {}
        self._funcs: dict[str, fastcall.ExportCaller] = {}
        self._func_types: dict[str, wasmtime.FuncType] = {}
        self._alloc_name = "proxy_on_memory_allocate"
        self._load(wasm)

    # -- loading ---------------------------------------------------------------------------

    def _load(self, wasm: bytes) -> None:

        link.register_host_functions()
        if wasm[:4] != b"\0asm":
            raise LoadError("Failed to parse corrupted Wasm module")
        fuel = self.options.fuel is not None
        epoch = self.options.deadline_ms is not None
        self._mode = (fuel, epoch)
        self._deadline_ticks = (
            max(1, math.ceil(self.options.deadline_ms / 1000 / compile.EPOCH_TICK_S))
            if self.options.deadline_ms is not None
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
        imports = link.link_imports(self, module, version)
        self._refill()
        try:
            instance = wasmtime.Instance(self.store, module, imports)
        except Exception as exc:
            raise LoadError("Failed to create new Wasm instance: " + trap_message(exc)) from exc
        link.bind_exports(self, module, instance, version)
        self._start()

    def _start(self) -> None:
        funcs = self._funcs
        self.starting = True
        try:
            if "_initialize" in funcs:
                self._raw_call("_initialize", funcs["_initialize"], ())
                main = funcs.get("main")
                if main is not None and link.sig(self._func_types["main"]) == "i32 i32 -> i32":
                    self._raw_call("main", main, (0, 0))
            elif "_start" in funcs:
                self._raw_call("_start", funcs["_start"], ())
        finally:
            self.starting = False
        if self.failed or self.hung:
            raise LoadError(self._load_failure())
        if self.base:
            return
        root = self._new_root()
        started = self.call_cb("proxy_on_vm_start", root, root.id, len(self.options.vm_config))
        if self.failed or self.hung:
            raise LoadError(self._load_failure())
        if started is not None and started == 0:
            raise LoadError("Failed to start base Wasm")
        self.configure(self.options.plugin_config)
        self.loaded = True

    def configure(self, plugin_config: bytes) -> None:
        """Run ``proxy_on_configure`` on the root context (raise LoadError on false/trap)."""
        root = self.root
        root.plugin_config = plugin_config
        try:
            ok = self.call_cb("proxy_on_configure", root, root.id, len(plugin_config))
        finally:
            root.plugin_config = None
        if self.failed or self.hung:
            raise LoadError(self._load_failure())
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
        if self.failed or self.hung:
            return
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
        if fn is None or self.failed or self.hung:
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
        prev_vm = hostfn.enter(self)
        top = self._depth == 0
        self._depth += 1
        if top:
            self.stop_next = False
            self._refill()
        if self.trace:
            self.envoy(LogLevel.TRACE, host_to_vm(name, args))
        try:
            result = fn(*args)
        except Exception as exc:
            self._trapped(name, exc)
            return None
        else:
            if self.trace:
                self.envoy(LogLevel.TRACE, host_from_vm(name, result))
            return result
        finally:
            self._depth -= 1
            hostfn.leave(prev_vm)
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

    def _load_failure(self) -> str:
        if self.failed:
            return self.failed
        return f"{self.hung}; Envoy would never finish starting this plugin"

    def _trapped(self, name: str, exc: BaseException) -> None:
        code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
        if code is not None and code.name in RUNAWAY_TRAPS:
            self.hang(f"Function: {name} stopped: {trap_message(exc)}")
            return
        # Envoy prints the in-VM backtrace for traps in a started VM, not while it loads.
        trace = backtrace(exc, self.wasm) if self.loaded else ""
        self.fail(f"Function: {name} failed: {trap_message(exc)}", trace)

    def fail(self, message: str, trace: str = "") -> None:
        """Mark the VM failed; Envoy logs the message (and the in-VM backtrace) at error."""
        if self.failed is None:
            self.failed = message
            self.log(LogLevel.ERROR, message, host=True)
            self.envoy(LogLevel.ERROR, message + trace)

    def hang(self, note: str) -> None:
        """A runaway callback was stopped: in Envoy it would never return (no log line)."""
        if self.hung is None and self.failed is None:
            self.hung = note
            self.log(LogLevel.WARN, f"{note}; {HANG}", host=True)

    def envoy(self, level: LogLevel, text: str) -> None:
        """Write one line of Envoy's ``[wasm]`` log (kept when ``level`` passes the VM's)."""
        if level >= self.options.log_level:
            self.envoy_lines.append(EnvoyLine(self.thread, LEVELS[level], text))

    def log(self, level: LogLevel, message: str | bytes, host: bool = False) -> None:
        """A plugin log line (``host``: a note of the host's own, never an Envoy line)."""
        raw = message if isinstance(message, bytes) else message.encode()
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        if host:
            self.logs.append(LogEntry(LogLevel(level), text, -1, raw))
            return
        ctx = self.context()
        self.logs.append(LogEntry(LogLevel(level), text, ctx.id, raw))
        self.envoy(level, plugin_log(self._prefixes[0 if ctx.is_root else 1], text))
