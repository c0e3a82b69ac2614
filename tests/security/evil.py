"""Support for the red-team suite: a hostile registry/module server and measured CLI runs.

:class:`EvilServer` is a plain-HTTP server on 127.0.0.1 whose paths answer with whatever a
hostile registry or module server might send (bodies a real registry would never store: lying
digests, endless streams, oversized manifests). :func:`run_measured` runs ``wasm-agent`` as a
child process and reports its exit code, output, wall time and peak RSS (``wait4``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
Responder = Callable[[BaseHTTPRequestHandler], None]


class EvilServer:
    """``with EvilServer() as evil: evil.route("/v2/x/manifests/v1", responder)``."""

    def __init__(self) -> None:
        self.routes: dict[str, Responder] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append(path)
                responder = server.routes.get(path)
                try:
                    if responder is None:
                        send(self, 404, b'{"errors":[{"code":"NOT_FOUND"}]}')
                    else:
                        responder(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def route(self, path: str, responder: Responder) -> None:
        self.routes[path] = responder

    def __enter__(self) -> EvilServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "") -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype or "application/octet-stream")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def manifest(body: bytes, media_type: str) -> Responder:
    """Answer with ``body`` as a manifest of ``media_type`` (no digest header)."""
    return lambda h: send(h, 200, body, media_type)


def endless(ctype: str = "application/octet-stream", chunk: int = 64 * 1024) -> Responder:
    """A chunked 200 response that never ends (until the client hangs up)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        block = b"%x\r\n" % chunk + b"\0" * chunk + b"\r\n"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            handler.wfile.write(block)

    return respond


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gzip_bomb(size: int) -> bytes:
    """gzip of ``size`` zero bytes, compressed in streaming chunks (about 1 MB per GB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    parts = [comp.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + comp.flush()


def nested_gzip(data: bytes, depth: int) -> bytes:
    for _ in range(depth):
        data = gzip.compress(data, compresslevel=1)
    return data


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A tar.gz of raw members (header as given: names, types, sizes may lie)."""
    out = io.BytesIO()
    for info, data in members:
        out.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        body = data or b""
        out.write(body + bytes(-len(body) % tarfile.BLOCKSIZE))
    out.write(bytes(2 * tarfile.BLOCKSIZE))
    return gzip.compress(out.getvalue())


def member(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def json_bytes(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class Measured:
    """One finished child process."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


def run_measured(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> Measured:
    """Run ``wasm-agent ARGS`` and measure it (peak RSS sampled from ``/proc/PID/status``)."""
    argv = [sys.executable, "-m", "wasm_agent", *args]
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, cwd=ROOT
    )
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    deadline = started + timeout
    peak_kib = 0
    while True:
        peak_kib = max(peak_kib, _high_water_kib(proc.pid))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, _ = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(10)
    return Measured(
        returncode=proc.returncode,
        stdout="".join(out_chunks),
        stderr="".join(err_chunks),
        seconds=time.monotonic() - started,
        peak_rss_mb=peak_kib / 1024,
    )


def _high_water_kib(pid: int) -> int:
    """The process's own peak RSS (``VmHWM``), 0 once it is gone.

    Not ``wait4``'s ``ru_maxrss``: Linux carries the parent's high-water mark across fork and
    exec into the child's, so under a long test run it reports the pytest worker's size.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
