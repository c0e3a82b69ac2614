"""Failure policies (Envoy's ``FailurePolicy``) and the plugin that owns the current VM.

A trap marks the VM failed. FAIL_CLOSED: the trapping stream and every later one get a 503
local reply. FAIL_OPEN: the trapping stream gets 503, later streams skip the plugin. FAIL_RELOAD
(Envoy's ``PluginConfig::maybeReloadHandleIfNeeded``): when a new stream finds the VM failed and
at least ``reload_backoff`` seconds (default 1 s; Envoy jitters it up to 1.5x) passed since the
last load or reload attempt, a fresh VM is loaded for it; otherwise the stream gets 503. All
three were checked against Envoy 1.40. Each VM has its own Store, so nothing here touches other
plugins.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from wasm_agent.host.abi import LogLevel
from wasm_agent.host.envoylog import MAIN, EnvoyLine, load_failure_lines
from wasm_agent.host.frontend import DEFAULT_ROUTE_TIMEOUT_MS
from wasm_agent.host.shared import SharedState
from wasm_agent.host.vm import LoadError, PluginVM, VmOptions

DEFAULT_RELOAD_BACKOFF = 1.0
DEFAULT_CONCURRENCY = 2  # Envoy's --concurrency the host models by default


class FailurePolicy(enum.Enum):
    FAIL_CLOSED = "FAIL_CLOSED"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class Plugin:
    """A configured plugin: its current VM, failure policy and reload state."""

    def __init__(
        self,
        wasm: bytes,
        options: VmOptions,
        policy: FailurePolicy = FailurePolicy.FAIL_CLOSED,
        *,
        shared: SharedState | None = None,
        reload_backoff: float = DEFAULT_RELOAD_BACKOFF,
        monotonic: Callable[[], float] = time.monotonic,
        connection: dict[str, tuple[str, int]] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.wasm = wasm
        self.options = options
        self.policy = policy
        self.shared = shared or SharedState()
        self.reload_backoff = reload_backoff
        self.monotonic = monotonic
        self.connection = connection or {
            "source": ("127.0.0.1", 50000),
            "destination": ("127.0.0.1", 10000),
            "upstream": ("127.0.0.1", 10001),
        }
        self.cluster_name = "upstream"  # xds.cluster_name
        self.route_name = ""  # xds.route_name
        self.virtual_host_name = ""  # xds.virtual_host_name
        self.route_timeout_ms = DEFAULT_ROUTE_TIMEOUT_MS  # x-envoy-expected-rq-timeout-ms
        if concurrency < 0:
            raise ValueError(f"concurrency must be 0 (one VM) or more, got {concurrency}")
        self.concurrency = concurrency
        self.envoy_lines: list[EnvoyLine] = []
        self.vm_count = 0  # VMs started (each with its root context), reloads included
        self._alive = 0  # Wasm objects alive, as Envoy's "now active" debug lines count them
        self.main_vm: PluginVM | None = None
        self.workers: list[PluginVM] = []
        self._shut_down = False
        try:
            self._start_vms()
        except LoadError as error:
            error.lines = load_failure_lines(str(error), options.plugin_name, self.envoy_lines)
            raise
        self.vm = self.workers[0]
        self.reloads = 0
        self._failed_at: float | None = None
        self._last_load = monotonic()
        self._next_connection_id = 1

    def _debug(self, thread: str, text: str) -> None:
        if self.options.log_level <= LogLevel.DEBUG:
            self.envoy_lines.append(EnvoyLine(thread, "debug", text))

    def _new_vm(self, thread: str) -> PluginVM:
        self._alive += 1
        self._debug(thread, f"Thread-Local Wasm created {self._alive} now active")
        vm = PluginVM(self.wasm, self.options, self.shared, thread=thread,
                      envoy_lines=self.envoy_lines)  # fmt: skip
        self.vm_count += 1
        return vm

    def _drop_vm(self, vm: PluginVM) -> None:
        self._alive -= 1
        self._debug(vm.thread, f"~Wasm {self._alive} remaining active")

    def _start_vms(self) -> None:
        """Start VMs as Envoy 1.40 does for a listener's filter (recorded with --concurrency 1
        and 2): the base Wasm on the main thread (started: ``_initialize`` runs; no root
        context), a thread-local VM on main that is started and dropped without
        ``proxy_on_done``, another on main that stays, and one per worker. ``concurrency=0``:
        one VM only (the fast, non-Envoy model)."""
        if self.concurrency == 0:
            self.workers = [self._new_vm("worker-0")]
            return
        self._alive += 1
        self._debug(MAIN, f"Base Wasm created {self._alive} now active")
        PluginVM(self.wasm, self.options, self.shared, thread=MAIN,
                 envoy_lines=self.envoy_lines, base=True)  # fmt: skip
        self._drop_vm(self._new_vm(MAIN))
        self.main_vm = self._new_vm(MAIN)
        self.workers = [self._new_vm(f"worker-{i}") for i in range(self.concurrency)]

    @property
    def vms(self) -> list[PluginVM]:
        """The live VMs: the workers' and the main thread's."""
        return [*self.workers, *([self.main_vm] if self.main_vm is not None else [])]

    def shutdown(self) -> None:
        """Envoy's shutdown: each worker's root context, then main's, gets ``proxy_on_done`` and
        ``proxy_on_delete`` (not a failed VM's); a hung VM means Envoy never stops (skipped)."""
        if self._shut_down:
            return
        self._shut_down = True
        for vm in self.vms:
            if vm.hung:
                continue
            vm.shutdown()
            self._drop_vm(vm)

    @property
    def fail_open(self) -> bool:
        return self.policy is FailurePolicy.FAIL_OPEN

    def next_connection_id(self) -> int:
        cid = self._next_connection_id
        self._next_connection_id += 1
        return cid

    def note_trap(self, vm: PluginVM) -> None:
        """Remember when the current VM failed (the reload backoff counts from here)."""
        if vm is self.vm and vm.failed and self._failed_at is None:
            self._failed_at = self.monotonic()

    def vm_for_stream(self) -> PluginVM | None:
        """The VM a new stream uses, or None when the plugin is failed for it."""
        vm = self.vm
        if not vm.failed:
            return vm
        self.note_trap(vm)
        if self.policy is not FailurePolicy.FAIL_RELOAD:
            return None
        now = self.monotonic()
        if now - self._last_load < self.reload_backoff:
            return None
        self._last_load = now
        try:
            fresh = self._new_vm(vm.thread)  # Envoy: a new thread-local Wasm, then the old goes
        except LoadError as exc:
            self._alive -= 1
            vm.log(LogLevel.CRITICAL, f"reload failed: {exc}", host=True)
            return None
        self._drop_vm(vm)
        self.workers[self.workers.index(vm)] = fresh
        self.vm, self._failed_at = fresh, None
        self.reloads += 1
        return fresh
