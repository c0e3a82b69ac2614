"""``--status-address``: ``/healthz/ready`` and ``/metrics`` for the node service.

A small HTTP/1.1 responder on asyncio (one request per connection, GET/HEAD, bounded request,
read timeout); the agent's status server lives above this package, so the node has its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from wasm_agent.core.metrics import REGISTRY

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class NodeStatusServer:
    """Readiness (``ready()``) and the Prometheus text of the shared metrics registry."""

    def __init__(self, address: str, ready: Callable[[], bool]) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--status-address: expected HOST:PORT, got {address!r}")
        self.host, self.port, self.ready = host.strip("[]"), int(port), ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/healthz/ready":
            return (200, b"ready\n") if self.ready() else (503, b"not ready: starting\n")
        if path == "/metrics":
            return 200, REGISTRY.render().encode()
        return 404, b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            parts = head[:MAX_REQUEST].split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(head) > MAX_REQUEST or len(parts) != 3:
                return
            status, body = self._route(parts[0], parts[1])
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: text/plain; "
                f"version=0.0.4; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + (b"" if parts[0] == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()
