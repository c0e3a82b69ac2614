"""Run the node service until a signal: restore the views, then serve CSI on the endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import grpc

from wasm_agent.core.listen import listen_error, os_reason
from wasm_agent.core.unix_socket import claim_socket_path
from wasm_agent.node.csi import add_services
from wasm_agent.node.service import NodeService
from wasm_agent.node.settings import NodeSettings
from wasm_agent.node.status import NodeStatusServer
from wasm_agent.node.unixsock import short_path

log = logging.getLogger(__name__)


class NodePlugin:
    """The node service with its CSI gRPC server and status server."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.service = NodeService(settings)
        self.server: grpc.aio.Server | None = None
        self.status: NodeStatusServer | None = None
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        """Restore views, listen on the CSI socket (and the status address)."""
        if address := self.settings.status_address:
            self.status = NodeStatusServer(address, self.ready)
            try:
                await self.status.start()
            except OSError as error:
                raise listen_error("--status-address", address, os_reason(error)) from None
        await self.service.start()
        socket_path = self.settings.csi_socket
        flag = f"--csi-endpoint unix:{socket_path}"
        claim_socket_path(socket_path, flag)  # only a stale socket is removed; no parents made
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 20)])
        add_services(self.server, self.service, self.ready)
        with short_path(socket_path) as name:
            try:
                self.server.add_insecure_port(f"unix:{name}")
            except RuntimeError:  # gRPC does not say why
                raise listen_error("--csi-endpoint", f"unix:{socket_path}", "cannot bind") from None
            await self.server.start()
        os.chmod(socket_path, 0o600)  # kubelet (root) only: pods never reach the CSI API
        self._ready = True
        log.info(
            "node service ready",
            extra={
                "csi_endpoint": str(socket_path),
                "node_id": self.settings.node_id,
                "volumes": len(self.service.volumes),
            },
        )

    async def stop(self) -> None:
        self._ready = False
        if self.server is not None:
            await self.server.stop(grace=1.0)
        await self.service.stop()
        if self.status is not None:
            await self.status.stop()


async def serve(settings: NodeSettings) -> None:
    """Run until SIGTERM or SIGINT; views and records stay on disk for the next start."""
    plugin = NodePlugin(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await plugin.start()
    purge = asyncio.create_task(plugin.service.cache.purge_periodically())
    try:
        await stop.wait()
    finally:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
        await plugin.stop()
