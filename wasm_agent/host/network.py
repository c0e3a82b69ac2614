"""The TCP (network filter) driver: new connection, data both ways, close events.

Data a callback stops stays in the connection's buffer and is handed over again, with the next
chunk, on the next call (Envoy's read/write buffers accumulate). Closing the downstream side runs
``proxy_on_downstream_connection_close`` and then the context's done/log/delete, like Envoy's
``onCloseTCP``. A failed VM closes the connection (fail closed) or is skipped (fail open).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasm_agent.host import abi
from wasm_agent.host.abi import BufferType, PeerType, StreamType
from wasm_agent.host.context import Buffer
from wasm_agent.host.streaminfo import connection_property

if TYPE_CHECKING:
    from wasm_agent.host.failure import Plugin
    from wasm_agent.host.vm import PluginVM


class TcpConnection:
    """One downstream connection through a network-filter plugin."""

    def __init__(self, plugin: Plugin, *, upstream_close_on_end: bool = True) -> None:
        self.plugin = plugin
        # Envoy's tcp_proxy: the upstream's end of stream closes the upstream connection
        # (proxy_on_upstream_connection_close with peer UNKNOWN) right after the data callback
        self.upstream_close_on_end = upstream_close_on_end
        self.vm = plugin.vm_for_stream()
        self.connection_id = plugin.next_connection_id()
        self.overrides: dict[bytes, bytes] = {}
        self.upstream_received = bytearray()  # what the upstream got (downstream data)
        self.downstream_received = bytearray()  # what the client got (upstream data)
        self.actions: list[tuple[str, str]] = []
        self.closed = False  # closed by the host (plugin request or failure)
        self.hung = False  # a runaway callback: Envoy would never return from it
        self.skipped = self.vm is None and plugin.fail_open
        self._pending: dict[int, bytearray] = {
            BufferType.DOWNSTREAM_DATA: bytearray(),
            BufferType.UPSTREAM_DATA: bytearray(),
        }
        self._downstream_closed = False
        self._finished = False
        self.ctx: Any = None
        if self.vm is None:
            self.closed = not self.skipped
            return
        self.ctx = self._vm.new_stream_context("tcp", self)
        result = self._vm.call_cb("proxy_on_new_connection", self.ctx, self.ctx.id)
        if not self._check_failed():
            self.actions.append(("new_connection", abi.network_status(result or 0).name))

    @property
    def _vm(self) -> PluginVM:
        """The stream's VM (only used once the stream is known to have one)."""
        assert self.vm is not None, "the plugin failed for this stream: it has no VM"
        return self.vm

    upstream_known = True  # tcp_proxy connects upstream before data flows

    def get_property(self, path: bytes) -> bytes | None:
        return connection_property(self, path)

    def continue_stream(self, stream_type: int) -> abi.Status:
        """Downstream: Envoy's continueReading (held data goes on to the upstream)."""
        if stream_type == StreamType.DOWNSTREAM:
            self._vm.defer(self._continue_reading)
        return abi.Status.OK

    def _continue_reading(self) -> None:
        pending = self._pending[BufferType.DOWNSTREAM_DATA]
        if pending and not self.closed:
            self.upstream_received += pending
            self._pending[BufferType.DOWNSTREAM_DATA] = bytearray()

    def close_stream(self, stream_type: int) -> abi.Status:
        if stream_type in (StreamType.DOWNSTREAM, StreamType.UPSTREAM):
            self.closed = True
        return abi.Status.OK

    def _usable(self) -> bool:
        if self.skipped:
            return False
        if self.vm is None or self.vm.failed:
            self._check_failed()
            return False
        return not self.closed

    def _check_failed(self) -> bool:
        if self.vm is not None and self.vm.hung:  # Envoy would never return: nothing flows
            self.hung = self.closed = True
            return True
        if self.vm is not None and self.vm.failed:
            self.plugin.note_trap(self._vm)
            if not self.plugin.fail_open:
                self.closed = True
            return True
        return False

    def send_downstream_data(self, data: bytes, end_stream: bool = False) -> str:
        """Client -> upstream bytes through ``proxy_on_downstream_data``."""
        return self._data(BufferType.DOWNSTREAM_DATA, data, end_stream)

    def send_upstream_data(self, data: bytes, end_stream: bool = False) -> str:
        """Upstream -> client bytes through ``proxy_on_upstream_data``."""
        result = self._data(BufferType.UPSTREAM_DATA, data, end_stream)
        if end_stream and self.upstream_close_on_end:
            self.close_upstream(PeerType.UNKNOWN)
        return result

    def _data(self, kind: int, data: bytes, end: bool) -> str:
        sink = (
            self.upstream_received
            if kind == BufferType.DOWNSTREAM_DATA
            else self.downstream_received
        )
        if self.closed and not self.skipped:
            return "closed"
        if not self._usable():
            if self.closed:
                return "closed"
            sink += data
            return "CONTINUE"
        name = "downstream" if kind == BufferType.DOWNSTREAM_DATA else "upstream"
        buffer = Buffer(self._pending[kind] + data, mutable=True)
        self.ctx.buffers[kind] = buffer
        result = self._vm.call_cb(
            f"proxy_on_{name}_data", self.ctx, self.ctx.id, buffer.size(), int(end)
        )
        self.ctx.buffers.pop(kind, None)
        if self._check_failed():
            return "hung" if self.hung else "failed"
        status = abi.network_status(result or 0)
        self.actions.append((f"{name}_data", status.name))
        if status == abi.NetworkStatus.CONTINUE:
            sink += buffer.data
            self._pending[kind] = bytearray()
        else:
            self._pending[kind] = buffer.data
        return status.name

    def close_downstream(self, peer: PeerType = PeerType.REMOTE) -> None:
        """The client side closed: downstream close callback, then done/log/delete."""
        if self._downstream_closed:
            return
        self._downstream_closed = True
        if self.ctx is not None and self.vm is not None and not self.vm.failed:
            self._vm.call_cb(
                "proxy_on_downstream_connection_close", self.ctx, self.ctx.id, int(peer)
            )
        self._finish()

    def close_upstream(self, peer: PeerType = PeerType.REMOTE) -> None:
        """The upstream side closed (also implied by upstream end_stream)."""
        if self.ctx is not None and self.vm is not None and not self.vm.failed:
            self._vm.call_cb("proxy_on_upstream_connection_close", self.ctx, self.ctx.id, int(peer))
        if self._downstream_closed:
            self._finish()

    def _finish(self) -> None:
        if self._finished or self.ctx is None or self.vm is None:
            return
        self._finished = True
        vm, ctx = self.vm, self.ctx
        vm.call_cb("proxy_on_done", ctx, ctx.id)
        vm.call_cb("proxy_on_log", ctx, ctx.id)
        vm.call_cb("proxy_on_delete", ctx, ctx.id)
        vm.delete_context(ctx)
