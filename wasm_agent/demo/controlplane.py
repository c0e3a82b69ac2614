"""The demo's control plane: a minimal ADS server (SotW) on grpcio, standing in for istiod.

It keeps one snapshot per type URL (a version and named resources), sends it on each stream's
first request for that type and pushes it again to every subscribed stream when it changes.
Every request that answers a response is recorded as a :class:`Reply` (an ACK, or a NACK with
its ``error_detail``), so the demo can show exactly what came back. Delta ADS is refused.
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


@dataclass
class _Stream:
    id: int
    context: Any
    subscribed: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ControlPlane:
    """``await cp.start()``; ``cp.address`` is ``127.0.0.1:PORT``; ``await cp.stop()``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.snapshot: dict[str, tuple[str, list[any_pb2.Any]]] = {}
        self.replies: list[Reply] = []
        self.sent: dict[str, tuple[str, str]] = {}  # nonce -> (type_url, version)
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._changed = asyncio.Condition()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind a port chosen by the OS and serve."""
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handlers: dict[str, grpc.RpcMethodHandler] = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(self._sotw),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(self._delta),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port(f"{self.host}:0")
        if not self.port:
            raise OSError(f"control plane cannot listen on {self.host}")
        await self.server.start()
        log.info("demo control plane listening", extra={"address": self.address})

    async def stop(self) -> None:
        """Stop serving; open streams end."""
        if self.server is not None:
            await self.server.stop(grace=0.2)
            self.server = None

    # -- the snapshot ------------------------------------------------------------------------

    async def set_resources(
        self, type_url: str, resources: dict[str, Message], version: str
    ) -> list[str]:
        """Replace the snapshot of ``type_url`` and push it; return the nonces sent."""
        packed = []
        for resource in resources.values():
            item = any_pb2.Any()
            item.Pack(resource)
            packed.append(item)
        self.snapshot[type_url] = (version, packed)
        nonces = []
        for stream in list(self._streams.values()):
            if type_url in stream.subscribed:
                nonces.append(await self._send(stream, type_url))
        return nonces

    async def _send(self, stream: _Stream, type_url: str) -> str:
        version, resources = self.snapshot[type_url]
        nonce = str(next(self._nonces))
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce, resources=resources
        )
        self.sent[nonce] = (type_url, version)
        async with stream.lock:
            await stream.context.write(response.SerializeToString())
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
            return any(type_url in s.subscribed for s in self._streams.values())

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(subscribed), timeout)

    async def _record(self, request: discovery_pb2.DiscoveryRequest) -> None:
        error = request.error_detail.message if request.HasField("error_detail") else None
        reply = Reply(
            type_url=request.type_url,
            nonce=request.response_nonce,
            version_info=request.version_info,
            error=error,
            code=request.error_detail.code,
        )
        self.replies.append(reply)
        log.info(
            "NACK received" if reply.nack else "ACK received",
            extra={"type": type_name(reply.type_url), "nonce": reply.nonce, "error": error},
        )

    # -- streams -----------------------------------------------------------------------------

    async def _delta(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the demo serves SotW ADS only")

    async def _sotw(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        stream = _Stream(id=next(self._ids), context=context)
        self._streams[stream.id] = stream
        try:
            async for raw in requests:
                try:
                    request = discovery_pb2.DiscoveryRequest.FromString(raw)
                except DecodeError:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
                    return
                first = request.type_url not in stream.subscribed
                stream.subscribed.add(request.type_url)
                if request.response_nonce:
                    await self._record(request)
                async with self._changed:
                    self._changed.notify_all()
                if first and request.type_url in self.snapshot:
                    await self._send(stream, request.type_url)
        finally:
            self._streams.pop(stream.id, None)
