"""A small asyncio HTTP/1.1 server for the demo: the module server and the backend.

Each path maps to fixed bytes, or to a hook that writes its own response (the tests' faults);
every response closes its connection. It understands just enough HTTP for ``GET``/``HEAD``
from httpx and Envoy, optionally over TLS, and records every request (counts per path).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class Page:
    """What one path answers."""

    body: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Request:
    """One request as the server read it; ``hits`` counts the path's requests, this included."""

    method: str
    path: str
    headers: dict[str, str]
    hits: int


Hook = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def response_head(status: int, headers: dict[str, str]) -> bytes:
    """A status line and headers (``Connection: close`` first), ending with the blank line."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in {"Connection": "close", **headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_response(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    head_only: bool = False,
) -> None:
    """Write a whole response with its ``Content-Length``."""
    head = response_head(status, {**(headers or {}), "Content-Length": str(len(body))})
    writer.write(head if head_only else head + body)
    await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return method, urlsplit(target).path, headers


class HttpServer:
    """``await srv.start()``; ``srv.serve(path, body)`` returns its URL; ``await srv.stop()``.

    ``ssl_context`` serves HTTPS; ``srv.hook(path, hook)`` hands that path's requests to
    ``hook(request, writer)``, which writes the whole response (any method).
    """

    def __init__(
        self, name: str, host: str = "127.0.0.1", *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.host = host
        self.ssl_context = ssl_context
        self.port = 0
        self.pages: dict[str, Page] = {}
        self.hooks: dict[str, Hook] = {}
        self.counts: Counter[str] = Counter()
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def serve(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        """Answer ``GET path`` with ``body``; return the URL."""
        self.pages[path] = Page(body, content_type)
        return self.url(path)

    def hook(self, path: str, hook: Hook) -> str:
        """Let ``hook`` answer every request for ``path``; return the URL."""
        self.hooks[path] = hook
        return self.url(path)

    async def start(self) -> None:
        """Listen on a port chosen by the OS."""
        self._server = await asyncio.start_server(
            self._handle, self.host, 0, ssl=self.ssl_context, limit=MAX_HEAD
        )
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
            method, path, headers = _parse_head(head)
            self.counts[path] += 1
            request = Request(method, path, headers, self.counts[path])
            self.requests.append(request)
            hook = self.hooks.get(path)
            if hook is not None:
                await hook(request, writer)
                return
            page = self.pages.get(path)
            if method not in ("GET", "HEAD"):
                status, page = 405, Page(b"GET only\n", "text/plain")
            elif page is None:
                status, page = 404, Page(b"not found\n", "text/plain")
            else:
                status = 200
            content_type = {"Content-Type": page.content_type}
            await send_response(writer, status, page.body, content_type, head_only=method == "HEAD")
            log.debug("served", extra={"server": self.name, "path": path, "status": status})
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()
