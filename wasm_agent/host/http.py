"""The HTTP stream driver: Envoy's HTTP filter behaviour around the plugin's callbacks.

Per direction (request, response) it keeps what the plugin sees and what the next hop has
received (``upstream`` for the request, ``client`` for the response). Results map like Envoy:
a headers callback's StopIteration (and any bogus code) becomes StopAllIterationAndWatermark,
body results above StopIterationNoBuffer become it, and a local response stops iteration.
While headers are stopped, body chunks wait in the filter manager and are replayed after
``proxy_continue_stream``; a body StopIterationAndBuffer keeps the data and hands the growing
buffer to the next call; StopIterationNoBuffer drops the chunk. Stream end runs ``proxy_on_log``
(with the final headers readable), ``proxy_on_done`` and ``proxy_on_delete``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wasm_agent.host import abi, frontend
from wasm_agent.host.abi import AbiVersion, BufferType, MapType, StreamType
from wasm_agent.host.context import Buffer
from wasm_agent.host.maps import HeaderMap
from wasm_agent.host.messages import (
    LocalResponse,
    Message,
    grpc_reply_headers,
    is_grpc_request,
    local_reply_headers,
)
from wasm_agent.host.streaminfo import grpc_status_of, http_property

if TYPE_CHECKING:
    from wasm_agent.host.failure import Plugin
    from wasm_agent.host.vm import PluginVM


class _Direction:
    """One direction of the stream as the filter sees it."""

    def __init__(self, is_request: bool) -> None:
        self.is_request = is_request
        self.headers: HeaderMap | None = None
        self.trailers: HeaderMap | None = None
        self.out = Message()
        self.paused = False  # headers stopped: later events wait in `pending`
        self.headers_sent = False
        self.buffered: bytearray | None = None  # body kept by StopIterationAndBuffer
        self.watermark = False  # kept by StopIterationAndWatermark: not shown to the next call
        self.pending_body: bytearray | None = None
        self.pending_end = False
        self.pending_trailers: HeaderMap | None = None
        self.end_seen = False

    @property
    def names(self) -> tuple[str, int, int, int]:
        if self.is_request:
            return ("request", MapType.HTTP_REQUEST_HEADERS, BufferType.HTTP_REQUEST_BODY,
                    MapType.HTTP_REQUEST_TRAILERS)  # fmt: skip
        return ("response", MapType.HTTP_RESPONSE_HEADERS, BufferType.HTTP_RESPONSE_BODY,
                MapType.HTTP_RESPONSE_TRAILERS)  # fmt: skip


class HttpStream:
    """One HTTP request/response through the plugin (see the module docstring)."""

    def __init__(self, plugin: Plugin, properties: dict[bytes, bytes] | None = None) -> None:
        self.plugin = plugin
        self.vm = plugin.vm_for_stream()
        self.request = _Direction(True)
        self.response = _Direction(False)
        self.actions: list[tuple[str, str]] = []
        self.local_response: LocalResponse | None = None
        self.reset = False
        self.failed = False
        self.skipped = self.vm is None and plugin.fail_open
        # A runaway plugin (stopped by fuel/deadline): Envoy never answers this stream.
        self.hung = self.vm is not None and self.vm.hung is not None
        self.ctx: Any = None
        self.overrides = properties or {}
        self.connection_id = plugin.next_connection_id()
        self.start_ns = plugin.options.clock_ns()
        self.done = False
        self.frontend = False  # HCM/router additions on (set by ``exchange(frontend=True)``)
        self.closing = False  # the client sent ``connection: close`` (front-end model)
        self.local_code: int | None = None  # a local reply's status (response.code)
        self.grpc = False  # a gRPC request: local replies become trailers-only gRPC responses
        self.head = False  # a HEAD request: local replies keep their length but send no body
        self._failed_early = self.vm is None and not self.skipped
        if self._failed_early:
            self._fail_stream()

    @property
    def _vm(self) -> PluginVM:
        """The stream's VM (only used once the stream is known to have one)."""
        assert self.vm is not None, "the plugin failed for this stream: it has no VM"
        return self.vm

    # -- plugin-facing hooks (called from host functions) -----------------------------------

    def get_property(self, path: bytes) -> bytes | None:
        return http_property(self, path)

    @property
    def upstream_known(self) -> bool:
        """The router picked an upstream host (``upstream.*`` properties exist): Envoy does it
        when the request headers reach the router, so from the request body phase on."""
        return self.request.out.headers is not None

    def response_code(self) -> int | None:
        """Envoy's stream-info response code: a local reply's code (a gRPC one's too, whose
        ``:status`` is 200), else the response's ``:status``."""
        if self.local_code is not None:
            return self.local_code
        headers = self.response.headers
        status = headers.get(b":status") if headers is not None else None
        return int(status) if status is not None and status.isdigit() else None

    def grpc_status(self) -> int:
        return grpc_status_of(
            self.response.headers, self.response.trailers, self.response_code() or 0
        )

    def continue_stream(self, stream_type: int) -> abi.Status:
        """Envoy: resume after the call; the request maps are dropped at once (any type)."""
        if stream_type not in (StreamType.REQUEST, StreamType.RESPONSE):
            return abi.Status.OK  # downstream: no network callbacks on an HTTP stream
        d = self.request if stream_type == StreamType.REQUEST else self.response
        self._vm.defer(lambda: self._resume(d))
        if self.ctx is not None:
            self.ctx.maps[MapType.HTTP_REQUEST_HEADERS] = None
            self.ctx.maps[MapType.HTTP_REQUEST_TRAILERS] = None
            self.ctx.buffers.pop(BufferType.HTTP_REQUEST_BODY, None)
        return abi.Status.OK

    def close_stream(self, stream_type: int) -> abi.Status:
        if stream_type in (StreamType.REQUEST, StreamType.RESPONSE):
            self._vm.defer(self._reset)
        return abi.Status.OK

    def send_local_response(self, reply: LocalResponse) -> None:
        self._vm.stop_next = True
        self._vm.defer(lambda: self._local_reply(reply, via_plugin=True))

    # -- test-facing events ------------------------------------------------------------------

    def send_request_headers(self, headers: Any, end_stream: bool = False) -> str:
        return self._on_headers(self.request, HeaderMap.coerce(headers), end_stream)

    def send_request_body(self, body: bytes, end_stream: bool = True) -> str:
        return self._on_data(self.request, bytes(body), end_stream)

    def send_request_trailers(self, trailers: Any) -> str:
        return self._on_trailers(self.request, HeaderMap.coerce(trailers))

    def send_response_headers(self, headers: Any, end_stream: bool = False) -> str:
        return self._on_headers(self.response, HeaderMap.coerce(headers), end_stream)

    def send_response_body(self, body: bytes, end_stream: bool = True) -> str:
        return self._on_data(self.response, bytes(body), end_stream)

    def send_response_trailers(self, trailers: Any) -> str:
        return self._on_trailers(self.response, HeaderMap.coerce(trailers))

    @property
    def upstream(self) -> Message:
        """What the upstream server received so far."""
        return self.request.out

    @property
    def client(self) -> Message:
        """What the downstream client received so far."""
        return self.response.out

    @property
    def closed(self) -> bool:
        """True when the stream is answered locally, reset, failed or hung (no upstream
        exchange)."""
        return self.reset or self.local_response is not None or self.failed or self.hung

    # -- internals ---------------------------------------------------------------------------

    def _active(self) -> bool:
        """False when the plugin is skipped (fail open) for this stream."""
        if self.skipped:
            return False
        if self._vm.failed:
            self._after_failure()
            return False
        return True

    def _ensure_context(self) -> None:
        if self.ctx is None:
            self.ctx = self._vm.new_stream_context("http", self)

    def _blocked(self, d: _Direction) -> bool:
        """Events the filter no longer sees (reset, failed, or after a local reply)."""
        if self.reset or self.failed or self.hung:
            return True
        if self.local_response is not None:
            return d.is_request or not self._lr_through
        return False

    def _on_headers(self, d: _Direction, headers: HeaderMap, end: bool) -> str:
        d.headers, d.end_seen = headers, end
        if d.is_request:
            self.grpc = is_grpc_request(headers)
            self.head = headers.get(b":method") == b"HEAD"
        if self._failed_early and d.is_request:  # the 503 is encoded as the headers arrive
            self._failed_early = False
            self.failed = False
            self._fail_stream()
        if self._blocked(d):
            return "hung" if self.hung else "closed"
        if not self._active():
            return self._passthrough_headers(d, headers, end)
        self._ensure_context()
        if self._check_failed():
            return "hung" if self.hung else "failed"
        name, map_id, _, _ = d.names
        self.ctx.maps[map_id] = headers
        args = (self.ctx.id, len(headers)) + (() if self._v01 else (int(end),))
        result = self._vm.call_cb(f"proxy_on_{name}_headers", self.ctx, *args)
        if self._check_failed():
            return "hung" if self.hung else "failed"
        status = abi.headers_status(result or 0, self._vm.last_stop)
        self.actions.append((f"{name}_headers", status.name))
        if self._blocked(d):
            return status.name
        if status == abi.HeadersStatus.CONTINUE:
            self._forward_headers(d)
        else:
            d.paused = True
        return status.name

    @property
    def _v01(self) -> bool:
        return self._vm.abi_version is AbiVersion.V0_1_0

    def _sent(self, d: _Direction) -> None:
        """Headers leave the filter: the router (request) or HCM (response) adds its own."""
        if not self.frontend or d.out.headers is None:
            return
        if d.is_request:
            frontend.route_request(d.out.headers, self.plugin.route_timeout_ms)
        else:
            now = self.plugin.options.clock_ns()
            frontend.encode_response(d.out.headers, self.request.end_seen, now, self.closing)

    def _forward_headers(self, d: _Direction) -> None:
        d.out.headers = d.headers.copy() if d.headers is not None else HeaderMap()
        self._sent(d)
        d.headers_sent = True
        self.ctx.maps[d.names[1]] = None
        if d.end_seen and d.pending_body is None and d.pending_trailers is None:
            d.out.complete = True
        problem = frontend.invalid_header(d.out.headers) if self.frontend and d.is_request else None
        if problem is not None:  # Envoy's router refuses to send it: 503 through the filters
            d.out = Message()
            self._local_reply(LocalResponse(503, problem.encode(), [], "invalid_header", -1), True)

    def _passthrough_headers(self, d: _Direction, headers: HeaderMap, end: bool) -> str:
        if self.failed:
            return "failed"
        d.out.headers, d.headers_sent, d.out.complete = headers.copy(), True, end
        self._sent(d)
        return "CONTINUE"

    def _on_data(self, d: _Direction, chunk: bytes, end: bool) -> str:
        d.end_seen = end
        if self._blocked(d):
            return "hung" if self.hung else "closed"
        if not self._active():
            if self.failed:
                return "failed"
            d.out.body += chunk
            d.out.complete = end
            return "CONTINUE"
        if d.paused:
            d.pending_body = (d.pending_body or bytearray()) + chunk
            d.pending_end = end
            return "PAUSED"
        return self._call_data(d, chunk, end)

    def _call_data(self, d: _Direction, chunk: bytes, end: bool) -> str:
        name, _, buf_id, _ = d.names
        # StopIterationAndWatermark holds the data but the next call sees only the new chunk
        # (Envoy 1.40: 6 bytes held, then the end-of-stream call got size 0; all 6 went on)
        held = (d.buffered or bytearray()) if d.watermark else bytearray()
        data = bytearray(chunk) if d.watermark else (d.buffered or bytearray()) + chunk
        d.watermark = False
        # held here: proxy_continue_stream drops the context's request buffer (as Envoy does)
        # but the chunk, with any change made before, still goes on
        buffer = self.ctx.buffers[buf_id] = Buffer(data, mutable=True)
        result = self._vm.call_cb(
            f"proxy_on_{name}_body", self.ctx, self.ctx.id, len(data), int(end)
        )
        if self._check_failed():
            return "hung" if self.hung else "failed"
        status = abi.data_status(result or 0, self._vm.last_stop)
        self.actions.append((f"{name}_body", status.name))
        if self._blocked(d):
            return status.name
        data = buffer.data
        if status == abi.DataStatus.CONTINUE:
            d.buffered = None
            self.ctx.buffers.pop(buf_id, None)
            d.out.body += held + data
            d.out.complete = end and d.pending_trailers is None
        elif status == abi.DataStatus.STOP_ITERATION_NO_BUFFER:
            d.buffered = held or None
            d.watermark = bool(held)
            self.ctx.buffers.pop(buf_id, None)
        else:
            d.buffered = held + data
            d.watermark = status == abi.DataStatus.STOP_ITERATION_AND_WATERMARK
        return status.name

    def _on_trailers(self, d: _Direction, trailers: HeaderMap) -> str:
        d.trailers, d.end_seen = trailers, True
        if self._blocked(d):
            return "hung" if self.hung else "closed"
        if not self._active():
            if self.failed:
                return "failed"
            d.out.trailers, d.out.complete = trailers.copy(), True
            return "CONTINUE"
        if d.paused:
            d.pending_trailers = trailers
            return "PAUSED"
        return self._call_trailers(d, trailers)

    def _call_trailers(self, d: _Direction, trailers: HeaderMap) -> str:
        name, _, _, map_id = d.names
        self.ctx.maps[map_id] = trailers
        result = self._vm.call_cb(f"proxy_on_{name}_trailers", self.ctx, self.ctx.id, len(trailers))
        if self._check_failed():
            return "hung" if self.hung else "failed"
        status = abi.trailers_status(result or 0, self._vm.last_stop)
        self.actions.append((f"{name}_trailers", status.name))
        if self._blocked(d):
            return status.name
        if status == abi.TrailersStatus.CONTINUE:
            self._flush_buffered(d)
            d.out.trailers, d.out.complete = trailers.copy(), True
            self.ctx.maps[map_id] = None
        else:
            d.paused = True
        return status.name

    def _flush_buffered(self, d: _Direction) -> None:
        if d.buffered is not None:
            d.out.body += d.buffered
            d.buffered = None
            d.watermark = False
            self.ctx.buffers.pop(d.names[2], None)

    def _resume(self, d: _Direction) -> None:
        """``proxy_continue_stream``: forward what was held and replay waiting events."""
        if self.closed or self.done:
            return
        if not d.headers_sent and d.headers is not None:
            d.paused = False
            self._forward_headers(d)
        elif d.trailers is not None and d.pending_trailers is None and d.paused:
            d.paused = False
            self._flush_buffered(d)
            d.out.trailers, d.out.complete = d.trailers.copy(), True
            return
        else:
            d.paused = False
            if d.buffered is not None:
                self._flush_buffered(d)
                d.out.complete = d.end_seen and d.trailers is None
        if d.pending_body is not None:
            body, end = d.pending_body, d.pending_end
            d.pending_body = None
            self._call_data(d, bytes(body), end)
        if d.pending_trailers is not None and not d.paused and d.buffered is None:
            trailers, d.pending_trailers = d.pending_trailers, None
            self._call_trailers(d, trailers)

    _lr_through = False

    def _local_reply(self, reply: LocalResponse, via_plugin: bool) -> None:
        if self.done or self.reset or self.local_response is not None:
            return  # Envoy 1.40: a second local reply from the plugin changes nothing
        self.local_response = reply
        self.request.paused = True
        headers = grpc_reply_headers(reply) if self.grpc else local_reply_headers(reply)
        body = b"" if self.grpc or self.head else reply.body  # gRPC: trailers-only
        d = self.response
        if self._cut_off():  # Envoy: headers already sent, all it can do is reset the stream
            return
        self.local_code = reply.status
        # From the request path the reply runs through the plugin's response callbacks; from
        # the response path it replaces the response without re-entering the plugin (Envoy).
        fresh = d.headers is None
        if via_plugin and fresh and self.ctx is not None and not self._vm.failed:
            d.paused = False
            self._lr_through = True
            self._on_headers(d, headers, not body)
            if body and not self._vm.failed:
                self._on_data(d, body, True)
            return
        d.out = Message(headers, bytearray(body), None, True)
        self._sent(d)

    def _cut_off(self) -> bool:
        """A reply replacing a response whose headers already reached the client: the client
        keeps what it got (complete when the length was met), the stream is reset (Envoy 1.40,
        a local reply or a trap on the response's end-of-stream frame)."""
        d = self.response
        if not (d.headers_sent and d.out.headers is not None):
            return False
        length = d.out.headers.get(b"content-length")
        d.out.complete = length is not None and length == str(len(d.out.body)).encode()
        self.reset = not d.out.complete
        return True

    def _reset(self) -> None:
        self.reset = True

    def _fail_stream(self) -> None:
        """Envoy's failStream: a 503 local reply (details ``wasm_fail_stream``), once; a
        response already on its way to the client stays as sent (recorded from Envoy 1.40: a
        trap on the response's end-of-stream frame leaves the client a complete 200)."""
        if self.failed:
            return
        self.failed = True
        self.request.paused = True
        d = self.response
        if self._cut_off():
            return
        # Envoy's reply has no length: its HTTP/1 codec appends content-length: 0 last (after
        # HCM's connection: close), which the front-end model does in ``client_headers``
        if self.grpc:
            headers = grpc_reply_headers(LocalResponse(503, b"", [], "wasm_fail_stream", -1))
        else:
            headers = HeaderMap([(b":status", b"503")])
        if not self.frontend:
            headers.add(b"content-length", b"0")
        d.out = Message(headers, bytearray(), None, True)
        self._sent(d)

    def _check_failed(self) -> bool:
        if self._vm.hung:
            self.hung = True
            self.request.paused = self.response.paused = True
            return True
        if self._vm.failed:
            self.plugin.note_trap(self._vm)
            self._fail_stream()
            return True
        return False

    def _after_failure(self) -> None:
        if not self.plugin.fail_open:
            self._fail_stream()

    def complete(self) -> None:
        """End the stream: ``proxy_on_log`` (final headers readable), on_done, on_delete."""
        if self.done:
            return
        self.done = True
        ctx, vm = self.ctx, self.vm
        if ctx is None or vm is None or vm.failed or vm.hung:
            return
        ctx.maps = {
            MapType.HTTP_REQUEST_HEADERS: self.request.out.headers or self.request.headers,
            MapType.HTTP_RESPONSE_HEADERS: self.response.out.headers,
            # the access log gets an empty trailers map when there are none (Envoy 1.40:
            # a lookup in on_log answered NOT_FOUND, not BAD_ARGUMENT)
            MapType.HTTP_RESPONSE_TRAILERS: self.response.out.trailers or HeaderMap(),
        }
        ctx.buffers = {}
        ctx.log_phase = True
        vm.call_cb("proxy_on_log", ctx, ctx.id)
        ctx.log_phase = False
        ctx.maps = {}
        for callback in ("proxy_on_done", "proxy_on_delete"):
            if vm.hung:  # Envoy runs these before the response leaves its write buffer
                break
            vm.call_cb(callback, ctx, ctx.id)
        if vm.hung:
            self.hung = True
            return
        vm.delete_context(ctx)
