"""What host functions share: the ``@host`` marker, the VM they act on (``Current.vm``), and
``VmLike``, the part of a VM they may use.

``@host(name, params, results)`` only marks a function (``params``/``results``: ``i`` i32,
``I`` i64; ``module="wasi"`` for both WASI module names); ``registry`` collects the marked
functions from its explicit list of modules. Nothing is registered by importing a module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from wasm_agent.host.abi import AbiVersion, LogLevel
    from wasm_agent.host.callouts import Callouts
    from wasm_agent.host.context import Context
    from wasm_agent.host.memory import GuestMemory
    from wasm_agent.host.metrics import Metrics
    from wasm_agent.host.shared import SharedState
    from wasm_agent.host.vmtypes import VmOptions

HostFn = Callable[..., Any]
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
MARK = "__proxy_wasm_import__"
# (import module, name) -> (params, results, function): filled by registry.host_function_table()
HOST_FUNCTIONS: dict[tuple[str, str], tuple[str, str, HostFn]] = {}


@dataclass(frozen=True)
class HostImport:
    """Where a host function is linked: import modules, name and its i32/i64 signature."""

    name: str
    params: str
    results: str
    modules: tuple[str, ...]


def host(name: str, params: str, results: str = "i", module: str = "env") -> Callable:
    """Mark ``fn`` as the host function ``module.name`` (collected by ``registry``)."""

    def mark(fn: HostFn) -> HostFn:
        modules = WASI_MODULES if module == "wasi" else (module,)
        setattr(fn, MARK, HostImport(name, params, results, modules))
        return fn

    return mark


class VmLike(Protocol):
    """The VM as host functions see it (``vm.PluginVM`` is the implementation)."""

    memory: GuestMemory
    options: VmOptions
    callouts: Callouts
    shared: SharedState
    metrics: Metrics
    root: Context
    contexts: dict[int, Context]
    abi_version: AbiVersion
    property_overrides: dict[bytes, bytes]
    failed: str | None
    hung: str | None
    starting: bool
    stop_next: bool
    last_stop: bool
    effective: int
    current: int
    map_seed: int

    def context(self) -> Context: ...
    def log(self, level: LogLevel, message: str | bytes, host: bool = False) -> None: ...
    def envoy(self, level: LogLevel, text: str) -> None: ...
    def defer(self, action: Callable[[], None]) -> None: ...
    def call_cb(self, name: str, ctx: Context, *args: int) -> int | None: ...
    def new_stream_context(self, kind: str, stream: Any) -> Context: ...
    def delete_context(self, ctx: Context) -> None: ...
    def finish_root(self, root: Context) -> None: ...


class _Current(threading.local):
    """The VM whose code is running, per thread (set around every call into a guest).

    Per thread because wasm runs without the GIL: VMs driven from different threads must not
    see each other's state.
    """

    vm: VmLike


Current = _Current()


def enter(vm: VmLike) -> VmLike | None:
    """Make ``vm`` current; return the previous one (for ``leave``)."""
    previous = Current.__dict__.get("vm")
    Current.vm = vm
    return previous


def leave(previous: VmLike | None) -> None:
    if previous is not None:
        Current.vm = previous
