"""The VM's plain types: options, log entries, load errors (shared by ``vm``, ``link``,
``failure`` and ``harness``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.host.abi import LogLevel

DEFAULT_FUEL = 200_000_000
DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024
# What Envoy 1.40 (V8) does with a plugin that never returns: nothing; the stream never gets an
# answer. The host stops it (fuel, deadline) and reports this instead of a failure.
HANG = "no response: Envoy would hang this stream"


class LoadError(WasmAgentError):
    """The module cannot be loaded/started; ``str()`` is Envoy's message (the root cause);
    ``lines`` is the whole sequence of ``(level, text)`` error lines Envoy logs for it."""

    def __init__(self, message: str, lines: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.lines: list[tuple[str, str]] = list(lines or [])


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
    # [host->vm]/[vm->host] call traces (Envoy's wasm component at trace); None: log_level TRACE
    trace_calls: bool | None = None
    # Envoy's capability_restriction_config.allowed_capabilities (None: everything allowed)
    allowed_capabilities: frozenset[str] | None = None
