"""A small asyncio HTTP/1.1 server for the demo: the module server and the backend.

Each path maps to fixed bytes; every response closes its connection. It understands just
enough HTTP for ``GET``/``HEAD`` from httpx and Envoy, and counts requests per path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class Page:
    """What one path answers."""

    body: bytes
    content_type: str = "application/octet-stream"


class HttpServer:
    """``await srv.start()``; ``srv.serve(path, body)`` returns its URL; ``await srv.stop()``."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.pages: dict[str, Page] = {}
        self.counts: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def serve(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        """Answer ``GET path`` with ``body``; return the URL."""
        self.pages[path] = Page(body, content_type)
        return self.url(path)

    async def start(self) -> None:
        """Listen on a port chosen by the OS."""
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("demo HTTP server listening", extra={"server": self.name, "port": self.port})

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = urlsplit(target).path
            self.counts[path] += 1
            page = self.pages.get(path)
            if method not in ("GET", "HEAD"):
                status, page = "405 Method Not Allowed", Page(b"GET only\n", "text/plain")
            elif page is None:
                status, page = "404 Not Found", Page(b"not found\n", "text/plain")
            else:
                status = "200 OK"
            lines = [
                f"HTTP/1.1 {status}",
                f"Content-Type: {page.content_type}",
                f"Content-Length: {len(page.body)}",
                "Connection: close",
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(page.body)
            await writer.drain()
            log.debug("served", extra={"server": self.name, "path": path, "status": status[:3]})
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
