"""An HTTP front for a test :class:`~tests.support.registry.Registry` that injects faults.

Requests are forwarded to the registry unless a :class:`Fault` matches (method and path regex,
for its first ``times`` matches): answer a status, redirect (to the registry itself or to a
given URL), or send half of the real body and close the connection. ``requests`` records every
(method, path) seen.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Fault:
    """``action``: ``"status"`` (answer ``status``), ``"redirect"`` (307 to ``location``, or to
    the registry's own URL for the path), ``"truncate"`` (half the body, then close), or
    ``"stall"`` (wait ``seconds`` before forwarding)."""

    method: str
    path_regex: str
    action: str
    times: int = 1
    status: int = 503
    location: str | None = None
    seconds: float = 0.0


class RegistryProxy:
    """``with RegistryProxy(registry.url) as proxy:``; ``proxy.host`` for ``oci://`` URLs."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=30.0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def __enter__(self) -> RegistryProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def count(self, method: str, path_regex: str) -> int:
        pattern = re.compile(path_regex)
        return sum(1 for m, p in self.requests if m == method and pattern.search(p))

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and re.search(fault.path_regex, path):
                    fault.times -= 1
                    return fault
        return None

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes):
        sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        return self._client.request(method, self.upstream + path, headers=sent, content=body)


def _make_handler(proxy: RegistryProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = proxy.take_fault(self.command, self.path)
            if fault is not None and fault.action == "status":
                self._send(fault.status, {"content-type": "text/plain"}, b"injected fault")
                return
            if fault is not None and fault.action == "redirect":
                location = fault.location or proxy.upstream + self.path
                self._send(307, {"location": location}, b"")
                return
            if fault is not None and fault.action == "stall":
                time.sleep(fault.seconds)
            resp = proxy.forward(self.command, self.path, dict(self.headers.items()), body)
            headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
            if fault is not None and fault.action == "truncate":
                self.send_response(resp.status_code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(resp.content)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(resp.content[: len(resp.content) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(resp.status_code, headers, resp.content)

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
