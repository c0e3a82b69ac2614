"""Shared pieces of the proxy tests: a proxy in this event loop and an Envoy-like client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from wasm_agent.xds.proxy import ListenSettings, XdsProxy
from wasm_agent.xds.upstream import DELTA_METHOD, SOTW_METHOD, Upstream, UpstreamSettings

NODE = base_pb2.Node(id="sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", cluster="test")


async def start_proxy(
    socket: Path, upstream: UpstreamSettings, converter: Any = None, **listen: Any
) -> XdsProxy:
    proxy = XdsProxy(
        ListenSettings(address=f"unix:{socket}", **listen), Upstream(upstream), converter
    )
    await proxy.start()
    return proxy


class AdsClient:
    """An Envoy-like ADS client on one stream, speaking bytes."""

    def __init__(self, target: str, delta: bool = False, metadata: tuple = ()) -> None:
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ],
        )
        self.delta = delta
        method = DELTA_METHOD if delta else SOTW_METHOD
        self.call: grpc.aio.StreamStreamCall[bytes, bytes]
        self.call = self.channel.stream_stream(method)(metadata=metadata)

    async def send(self, message: Any) -> None:
        await self.call.write(message.SerializeToString())

    async def request(self, type_url: str, *, node: bool = False, **fields: Any) -> None:
        kind = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        message = kind(type_url=type_url, **fields)
        if node:
            message.node.CopyFrom(NODE)
        await self.send(message)

    async def read_raw(self, timeout: float = 30.0) -> bytes:
        raw = await asyncio.wait_for(self.call.read(), timeout)
        if not isinstance(raw, bytes):  # grpc.aio.EOF
            raise EOFError("stream ended")
        return raw

    async def read(self, timeout: float = 30.0) -> Any:
        kind = (
            discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
        )
        return kind.FromString(await self.read_raw(timeout))

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


async def refusals(
    calls: list[grpc.aio.StreamStreamCall[bytes, bytes]], wanted: int, timeout: float = 45.0
) -> list[grpc.aio.AioRpcError]:
    """The calls refused with RESOURCE_EXHAUSTED, once ``wanted`` of them are (or the deadline
    passes): the accepted ones never end on their own, so waiting for every call would not do."""
    reads = [asyncio.ensure_future(call.read()) for call in calls]

    def refused() -> list[grpc.aio.AioRpcError]:
        return [
            error
            for read in reads
            if read.done() and not read.cancelled()
            if isinstance(error := read.exception(), grpc.aio.AioRpcError)
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while len(found := refused()) < wanted and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return found
    finally:
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
