"""The downstream gRPC server Envoy connects to (SotW and Delta ADS, bytes in and out)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import grpc
import grpc.aio

from wasm_agent.core.listen import listen_error, tcp_bind_problem, unix_bind_problem
from wasm_agent.core.unix_socket import claim_socket_path
from wasm_agent.xds.ecds import Converter
from wasm_agent.xds.streams import ProxyStream
from wasm_agent.xds.types import Flavour
from wasm_agent.xds.upstream import ADS_SERVICE, DEFAULT_MAX_MESSAGE_SIZE, ChannelOptions, Upstream

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[bytes, bytes]"


@dataclass(frozen=True)
class ListenSettings:
    """Where Envoy connects and what the downstream server accepts."""

    address: str = "unix:./etc/istio/proxy/XDS"
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_streams: int = 100
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0


def grpc_listen_address(address: str) -> tuple[str, Path | None]:
    """``unix:PATH`` or ``HOST:PORT`` to a grpc bind address (and the socket path, if any)."""
    if address.startswith("unix:"):
        path = Path(address[len("unix:") :].removeprefix("//"))
        if not str(path):
            raise ValueError("--listen unix: needs a path")
        return f"unix:{path}", path
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--listen: expected unix:PATH or HOST:PORT, got {address!r}")
    return address, None


def _bind_problem(address: str) -> str | None:
    """Why ``address`` (a grpc bind address, ``unix:PATH`` or HOST:PORT) cannot be bound."""
    if address.startswith("unix:"):
        return unix_bind_problem(address[len("unix:") :])
    host, _, port = address.rpartition(":")
    return tcp_bind_problem(host, int(port))


def _remove_own_socket(path: Path, inode: int) -> None:
    """Unlink ``path`` if it is still the socket this proxy bound (not a successor's)."""
    try:
        if os.lstat(path).st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


class XdsProxy:
    """Serves Envoy's ADS streams, each joined to its own upstream stream to istiod."""

    def __init__(
        self, listen: ListenSettings, upstream: Upstream, converter: Converter | None = None
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.converter = converter
        self.streams: set[ProxyStream] = set()
        self.up_streams: set[ProxyStream] = set()
        self.server: grpc.aio.Server | None = None
        self.bound_port = 0
        self._socket_path: Path | None = None
        self._socket_inode = 0
        self.draining = False
        self.refused = 0

    @property
    def ready(self) -> bool:
        """True while at least one upstream stream to istiod is up."""
        return bool(self.up_streams) and not self.draining

    def stream_up(self, stream: ProxyStream) -> None:
        if not self.up_streams:
            log.info("upstream stream to istiod is up", extra={"stream": stream.id})
        self.up_streams.add(stream)

    def stream_down(self, stream: ProxyStream) -> None:
        self.up_streams.discard(stream)

    def _server_options(self) -> ChannelOptions:
        s = self.listen
        return [
            ("grpc.max_receive_message_length", s.max_message_size),
            ("grpc.max_send_message_length", s.max_message_size),
            ("grpc.keepalive_time_ms", int(s.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),
        ]

    async def start(self) -> None:
        """Bind the listen address and start serving."""
        address, path = grpc_listen_address(self.listen.address)
        flag = f"--listen {self.listen.address}"
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            claim_socket_path(path, flag)  # only a stale socket is removed (core/unix_socket.py)
        self.server = grpc.aio.server(options=self._server_options())
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(self._sotw),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(self._delta),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),)
        )
        if problem := _bind_problem(address):  # gRPC would say only "Failed to bind"
            raise listen_error("--listen", self.listen.address, problem)
        try:
            self.bound_port = self.server.add_insecure_port(address)
        except RuntimeError:  # taken between the check and now
            raise listen_error("--listen", self.listen.address, "cannot bind") from None
        if path is None and self.bound_port == 0:
            raise listen_error("--listen", self.listen.address, "cannot bind")
        await self.server.start()
        if path is not None:
            os.chmod(path, 0o660)
            self._socket_path, self._socket_inode = path, os.lstat(path).st_ino
        log.info("xDS proxy listening", extra={"address": self.listen.address})

    async def _sotw(self, requests: AsyncIterator[bytes], context: Context) -> None:
        await self._serve(Flavour.SOTW, requests, context)

    async def _delta(self, requests: AsyncIterator[bytes], context: Context) -> None:
        await self._serve(Flavour.DELTA, requests, context)

    async def _serve(
        self, flavour: Flavour, requests: AsyncIterator[bytes], context: Context
    ) -> None:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "agent shutting down")
        if len(self.streams) >= self.listen.max_streams:
            self.refused += 1
            if self.refused % 100 == 1:  # a flood must not flood the log too
                log.warning(
                    "too many envoy streams; refusing",
                    extra={"limit": self.listen.max_streams, "refused": self.refused},
                )
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many xDS streams (limit {self.listen.max_streams})",
            )
        stream = ProxyStream(self, flavour, requests, context)
        self.streams.add(stream)
        try:
            await stream.run()
        finally:
            self.streams.discard(stream)

    async def stop(self, grace: float = 3.0) -> None:
        """Drain: end open streams cleanly, stop the server, close upstream channels."""
        self.draining = True
        for stream in list(self.streams):
            stream.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.streams and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.server is not None:
            await self.server.stop(grace=max(0.0, deadline - loop.time()))
        await self.upstream.close()
        if self._socket_path is not None:
            _remove_own_socket(self._socket_path, self._socket_inode)
        log.info("xDS proxy stopped")
