"""An HTTP upstream that answers every request with what it received, as JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode(errors="replace"),
        }
        assert isinstance(self.server, _EchoServer)
        self.server.requests.append(seen)
        payload = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-echo", "1")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _echo

    def log_message(self, *args: Any) -> None:
        pass


class _EchoServer(ThreadingHTTPServer):
    requests: list[dict[str, Any]]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.requests = []


class EchoServer:
    """Start with ``with EchoServer() as echo:``; ``echo.port``, ``echo.requests``."""

    def __init__(self) -> None:
        self.server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def __enter__(self) -> EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
