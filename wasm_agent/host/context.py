"""Contexts (root, HTTP stream, TCP connection) and the buffers they expose to the plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wasm_agent.host.abi import Status
from wasm_agent.host.maps import HeaderMap


class Buffer:
    """A buffer the plugin can read and maybe modify.

    ``mutable`` buffers follow Envoy's ``Buffer::copyFrom`` for live body/data buffers:
    ``start=0`` drains ``length`` bytes (all of them if ``length>=size``) and prepends the data
    (so ``length=0`` prepends, ``length>=size`` replaces), ``start>=size`` appends, anything
    else is BAD_ARGUMENT. Immutable buffers (configs, callout bodies) refuse writes.
    """

    __slots__ = ("data", "mutable")

    def __init__(self, data: bytes | bytearray = b"", mutable: bool = False) -> None:
        self.data = data if isinstance(data, bytearray) else bytearray(data)
        self.mutable = mutable

    def size(self) -> int:
        return len(self.data)

    def copy_from(self, start: int, length: int, value: bytes) -> Status:
        if not self.mutable:
            return Status.BAD_ARGUMENT
        if start == 0:
            # drain(length) (clamped to the buffer), then prepend
            self.data[:length] = value
            return Status.OK
        if start >= len(self.data):
            self.data += value
            return Status.OK
        return Status.BAD_ARGUMENT


EMPTY = Buffer(b"")


@dataclass
class Context:
    """One Proxy-Wasm context: the plugin (root) context or a stream's context."""

    id: int
    root_id: int  # 0 for a root context
    kind: str  # "root", "http" or "tcp"
    stream: Any = None  # HttpStream / TcpConnection driving this context
    maps: dict[int, HeaderMap | None] = field(default_factory=dict)
    buffers: dict[int, Buffer] = field(default_factory=dict)
    filter_state: dict[bytes, bytes] = field(default_factory=dict)
    status: tuple[int, bytes] = (0, b"")
    created: bool = False
    log_phase: bool = False  # proxy_on_log: maps readable, not writable (nor their size)
    # root-only state
    plugin_config: bytes | None = None  # set while proxy_on_configure runs
    http_call_response: tuple[HeaderMap, bytes, HeaderMap] | None = None
    grpc_initial: HeaderMap | None = None
    grpc_trailing: HeaderMap | None = None
    grpc_buffer: bytes | None = None
    call_data: bytes = b""
    tick_period_ms: int = 0
    done_pending: bool = False

    @property
    def is_root(self) -> bool:
        return self.root_id == 0
