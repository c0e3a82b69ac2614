"""The status server: ``/healthz/ready`` and ``/metrics`` over plain asyncio (no threads).

A deliberately small HTTP/1.1 server: one request per connection, GET/HEAD only, bounded
request size, a read timeout, so a stuck or hostile client cannot hold it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from wasm_agent.core.listen import listen_error, os_reason
from wasm_agent.core.metrics import REGISTRY, Registry

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class StatusServer:
    """Serves readiness (``ready()`` decides) and the Prometheus text of ``registry``."""

    def __init__(
        self, address: str, ready: Callable[[], bool], registry: Registry = REGISTRY
    ) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--status-address: expected HOST:PORT, got {address!r}")
        self.address = address
        self.host = host.strip("[]")
        self.port = int(port)
        self.ready = ready
        self.registry = registry
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; :class:`~wasm_agent.core.listen.ListenError` naming the flag if it cannot."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as error:
            reason = os_reason(error)
            raise listen_error("--status-address", self.address, reason) from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("status server listening", extra={"address": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, path = _request_line(head)
            status, content_type, body = self._route(method, path)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/healthz/ready":
            if self.ready():
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"not ready: no upstream stream to istiod\n"
        if path == "/metrics":
            text = self.registry.render().encode()
            return 200, "text/plain; version=0.0.4; charset=utf-8", text
        return 404, "text/plain", b"not found\n"


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > MAX_REQUEST:
        raise ValueError("request too large")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    return parts[0], parts[1]
