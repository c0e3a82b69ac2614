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
from wasm_agent.host.shared import SharedState
from wasm_agent.host.vm import LoadError, PluginVM, VmOptions

DEFAULT_RELOAD_BACKOFF = 1.0


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
        self.vm = PluginVM(wasm, options, self.shared)
        self.reloads = 0
        self._failed_at: float | None = None
        self._last_load = monotonic()
        self._next_connection_id = 1

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
            fresh = PluginVM(self.wasm, self.options, self.shared)
        except LoadError as exc:
            vm.log(LogLevel.CRITICAL, f"reload failed: {exc}", host=True)
            return None
        self.vm, self._failed_at = fresh, None
        self.reloads += 1
        return fresh
