"""The demo's control plane: a small ADS server (SotW and Delta) on grpc.aio, like istiod.

It keeps one snapshot per type URL (a version and named resources), sends it on each stream's
first request for that type and pushes it again to every subscribed stream when it changes.
Every request is kept on its :class:`Stream`, and every one answering a response is recorded as
a :class:`Reply` (an ACK, or a NACK with its ``error_detail``), so the demo can show exactly
what came back. Responses go through a per-stream outbox written one at a time, so a client that
does not read holds the control plane back (HTTP/2 flow control); tests also put raw bytes or an
abort in an outbox. It listens on ``HOST:PORT`` (port 0: one from the OS) or ``unix:PATH``,
optionally with TLS (``credentials``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from wasm_agent.xds.types import type_name
from wasm_agent.xds.upstream import ADS_SERVICE

log = logging.getLogger(__name__)

MAX_MESSAGE = 256 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """A request answering one of our responses: an ACK, or a NACK when ``error`` is set."""

    type_url: str
    nonce: str
    version_info: str  # what the client says it runs now (a NACK repeats the last good one)
    error: str | None = None
    code: int = 0

    @property
    def nack(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class Abort:
    """An outbox item: end the stream with this status."""

    code: grpc.StatusCode
    details: str = ""


CLOSE = object()  # an outbox item: end the stream with OK


@dataclass
class Stream:
    """One ADS stream as the control plane sees it."""

    id: int
    delta: bool
    metadata: dict[str, str]
    peer_identity: list[bytes] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # (type_url, version, nonce)
    subscribed: set[str] = field(default_factory=set)
    outbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    closed: bool = False
    yielded: int = 0  # responses handed to gRPC (flow control holds the rest in the outbox)
    loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)  # the server's

    def send(self, item: object) -> None:
        """Queue serialized bytes, :class:`Abort` or :data:`CLOSE`; from any thread (a call from
        outside the server's loop is handed to it, so the loop wakes up for it)."""
        if self.closed:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop is not None and running is not self.loop:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)
        else:
            self.outbox.put_nowait(item)


def pack(resources: dict[str, Message | any_pb2.Any]) -> dict[str, any_pb2.Any]:
    """Resources packed into ``Any`` (type.googleapis.com prefix), already packed ones kept."""
    packed = {}
    for name, resource in resources.items():
        if isinstance(resource, any_pb2.Any):
            packed[name] = resource
        else:
            packed[name] = any_pb2.Any()
            packed[name].Pack(resource)
    return packed


def response(
    delta: bool, type_url: str, version: str, nonce: str, resources: dict[str, any_pb2.Any]
) -> discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse:
    """A SotW or Delta discovery response carrying ``resources``."""
    if not delta:
        return discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce, resources=resources.values()
        )
    message = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version, type_url=type_url, nonce=nonce
    )
    for name, resource in resources.items():
        message.resources.add(name=name, version=version, resource=resource)
    return message


class ControlPlane:
    """``await cp.start()``; ``cp.address`` is ``127.0.0.1:PORT``; ``await cp.stop()``."""

    def __init__(
        self,
        address: str = "127.0.0.1:0",
        *,
        credentials: grpc.ServerCredentials | None = None,
        nonce_prefix: str = "",
    ) -> None:
        self.unix = address if address.startswith("unix:") else ""
        self.host, _, port = ("", "", "0") if self.unix else address.rpartition(":")
        self.port = int(port)
        self.credentials = credentials
        self.nonce_prefix = nonce_prefix
        self.server: grpc.aio.Server | None = None
        self.snapshot: dict[str, tuple[str, dict[str, any_pb2.Any]]] = {}
        self.auto_respond = True  # answer a stream's first request for a type with the snapshot
        self.streams: list[Stream] = []
        self.replies: list[Reply] = []
        self.sent: dict[str, tuple[str, str]] = {}  # nonce -> (type_url, version)
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._changed = asyncio.Condition()

    @property
    def address(self) -> str:
        return self.unix or f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind (port 0: a port chosen by the OS) and serve."""
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
                # like istiod: keepalive pings from clients every 15 s or more are welcome (gRPC's
                # default answers a 30 s keepalive on an idle connection with GOAWAY too_many_pings)
                ("grpc.http2.min_ping_interval_without_data_ms", 15_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(self._sotw),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(self._delta),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),)
        )
        if self.credentials is None:
            bound = self.server.add_insecure_port(self.address)
        else:
            bound = self.server.add_secure_port(self.address, self.credentials)
        if not bound:
            raise OSError(f"control plane cannot listen on {self.address}")
        if not self.unix:
            self.port = bound
        await self.server.start()
        log.info("demo control plane listening", extra={"address": self.address})

    async def stop(self, grace: float | None = 0.2) -> None:
        """Stop serving; open streams end."""
        if self.server is not None:
            for stream in self.open_streams():
                stream.send(CLOSE)
            await self.server.stop(grace=grace)
            self.server = None

    def open_streams(self) -> list[Stream]:
        return [s for s in self.streams if not s.closed]

    # -- the snapshot ------------------------------------------------------------------------

    async def set_resources(
        self, type_url: str, resources: dict[str, Message | any_pb2.Any], version: str
    ) -> list[str]:
        """Replace the snapshot of ``type_url`` and push it; return the nonces sent."""
        self.snapshot[type_url] = (version, pack(resources))
        return [self._send(s, type_url) for s in self.open_streams() if type_url in s.subscribed]

    def _send(self, stream: Stream, type_url: str) -> str:
        version, resources = self.snapshot[type_url]
        nonce = f"{self.nonce_prefix}{next(self._nonces)}"
        message = response(stream.delta, type_url, version, nonce, resources)
        self.sent[nonce] = (type_url, version)
        stream.sent.append((type_url, version, nonce))
        stream.send(message.SerializeToString())
        log.info(
            "sent a discovery response",
            extra={"type": type_name(type_url), "version": version, "nonce": nonce},
        )
        return nonce

    # -- replies -----------------------------------------------------------------------------

    async def wait_reply(self, nonce: str, timeout: float) -> Reply:
        """The ACK or NACK of the response ``nonce``; ``TimeoutError`` if none comes in time."""

        def find() -> Reply | None:
            return next((r for r in self.replies if r.nonce == nonce), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(find), timeout)
        reply = find()
        assert reply is not None
        return reply

    async def wait_subscribed(self, type_url: str, timeout: float) -> None:
        """Until some stream has asked for ``type_url``."""

        def subscribed() -> bool:
            return any(type_url in s.subscribed for s in self.open_streams())

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(subscribed), timeout)

    def _record(self, request: Any) -> None:
        error = request.error_detail.message if request.HasField("error_detail") else None
        reply = Reply(
            type_url=request.type_url,
            nonce=request.response_nonce,
            version_info=getattr(request, "version_info", ""),
            error=error,
            code=request.error_detail.code,
        )
        self.replies.append(reply)
        log.info(
            "NACK received" if reply.nack else "ACK received",
            extra={"type": type_name(reply.type_url), "nonce": reply.nonce, "error": error},
        )

    # -- streams -----------------------------------------------------------------------------

    async def _sotw(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self._serve(False, requests, context)

    async def _delta(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self._serve(True, requests, context)

    async def _serve(
        self, delta: bool, requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        stream = Stream(
            id=next(self._ids), delta=delta, metadata=metadata, loop=asyncio.get_running_loop()
        )
        stream.peer_identity = list(context.peer_identities() or [])
        self.streams.append(stream)
        reader = asyncio.create_task(self._read(stream, requests))
        try:
            while True:
                item = await stream.outbox.get()
                if item is CLOSE:
                    return
                if isinstance(item, Abort):
                    await context.abort(item.code, item.details)
                stream.yielded += 1
                assert isinstance(item, bytes)
                await context.write(item)
        finally:
            stream.closed = True
            reader.cancel()
            async with self._changed:
                self._changed.notify_all()

    async def _read(self, stream: Stream, requests: Any) -> None:
        kind = (
            discovery_pb2.DeltaDiscoveryRequest if stream.delta else discovery_pb2.DiscoveryRequest
        )
        try:
            async for raw in requests:
                try:
                    request = kind.FromString(raw)
                except DecodeError:
                    stream.send(Abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request"))
                    return
                stream.requests.append(request)
                if request.response_nonce:
                    self._record(request)
                if not request.HasField("error_detail") and self.auto_respond:
                    first = request.type_url not in stream.subscribed
                    stream.subscribed.add(request.type_url)
                    if first and request.type_url in self.snapshot:
                        self._send(stream, request.type_url)
                async with self._changed:
                    self._changed.notify_all()
        except grpc.RpcError:
            pass
        finally:
            stream.send(CLOSE)
