"""A real HTTP(S) module server on 127.0.0.1 with scripted faults, for fetch and cache tests.

The server is the demo's asyncio :class:`~wasm_agent.demo.modserver.HttpServer` running its own
event loop in a background thread, so sync and async tests can use it alike, and it serves many
connections concurrently. Every response carries ``Connection: close``.

Usage::

    with ModServer() as srv:                     # or ModServer(tls=self_signed_cert(tmp_path))
        url = srv.serve("/m.wasm", data)         # -> "http://127.0.0.1:<port>/m.wasm"
        srv.fail("/flaky", 500, times=2, then=data)   # 500 twice, then 200 with data
        srv.fail("/gone", 404)                   # always 404 (unknown paths are 404 too)
        srv.redirect("/r", "/m.wasm")            # 302 to a path or an absolute URL
        srv.slow("/drip", data, chunk=64, delay=0.05)   # body dripped in chunks
        srv.stall("/stall", data, after=10)      # headers + 10 body bytes, then silence
        srv.reset("/cut", data, after=100)       # 100 body bytes, then a TCP reset
        srv.serve("/lie", data, content_length=len(data) + 50)   # Content-Length lies
        srv.serve("/gz", gzip.compress(data), headers={"Content-Encoding": "gzip"})
        srv.count("/flaky")                      # requests seen for that path
        srv.requests                             # [(method, path, headers dict), ...]

General form: ``srv.route(path, Route(...))`` with every :class:`Route` field. Payload helpers:
:func:`gzip_bytes`, :func:`tar_bytes` (regular files, links, devices, odd names),
:func:`self_signed_cert` (cert for 127.0.0.1/localhost made with ``cryptography``).
``srv.url(path)`` builds URLs; ``srv.url(path, host="localhost")`` uses another host name.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import gzip
import io
import ipaddress
import socket
import ssl
import struct
import tarfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasm_agent.demo.modserver import HttpServer, Request, response_head, send_response


@dataclass
class Route:
    """How one path answers. Faults apply in order: ``fail_status`` (for the first
    ``fail_times`` requests, or always when None), ``location`` (redirect), then the body with
    optional Content-Length override, ``reset_after``, ``stall_after`` or dripping."""

    data: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    fail_status: int | None = None
    fail_times: int | None = None
    location: str | None = None
    content_length: int | None = None  # None: the real length; -1: no header, close-delimited
    drip_chunk: int = 0
    drip_delay: float = 0.0
    stall_after: int | None = None
    reset_after: int | None = None


@dataclass
class TLSFiles:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting this certificate."""
        return ssl.create_default_context(cafile=str(self.cert))


class ModServer:
    """See the module docstring. ``port``, ``base_url``, ``url()``, ``count()``, ``requests``.

    The server is the demo's :class:`~wasm_agent.demo.modserver.HttpServer` on a background
    event loop; each route is a hook on it that plays the route's faults.
    """

    def __init__(self, *, tls: TLSFiles | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.tls = tls
        self.routes: dict[str, Route] = {}
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert, tls.key)
        self.server = HttpServer("test module server", host, ssl_context=context)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # lifecycle
    def start(self) -> ModServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.server.stop()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:  # handlers still stalled on purpose
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ModServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addresses
    @property
    def port(self) -> int:
        return self.server.port

    @property
    def scheme(self) -> str:
        return self.server.scheme

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url(self, path: str, *, host: str | None = None, userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"{self.scheme}://{at}{host or self.host}:{self.port}{path}"

    # routes
    def route(self, path: str, route: Route) -> str:
        self.routes[path] = route
        self.server.hook(path, functools.partial(_respond, route))
        return self.url(path)

    def serve(self, path: str, data: bytes, **fields: Any) -> str:
        return self.route(path, Route(data=data, **fields))

    def fail(self, path: str, status: int, *, times: int | None = None, then: bytes = b"") -> str:
        return self.route(path, Route(data=then, fail_status=status, fail_times=times))

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.route(path, Route(status=status, location=location))

    def slow(self, path: str, data: bytes, *, chunk: int = 64, delay: float = 0.05) -> str:
        return self.route(path, Route(data=data, drip_chunk=chunk, drip_delay=delay))

    def stall(self, path: str, data: bytes, *, after: int = 0) -> str:
        return self.route(path, Route(data=data, stall_after=after))

    def reset(self, path: str, data: bytes, *, after: int = 0) -> str:
        return self.route(path, Route(data=data, reset_after=after))

    @property
    def counts(self) -> Counter[str]:
        return self.server.counts

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        return [(r.method, r.path, r.headers) for r in self.server.requests]

    def count(self, path: str) -> int:
        return self.server.counts[path]

    def reset_counts(self) -> None:
        async def clear() -> None:
            self.server.counts.clear()
            self.server.requests.clear()

        asyncio.run_coroutine_threadsafe(clear(), self._loop).result(30)


async def _respond(route: Route, request: Request, writer: asyncio.StreamWriter) -> None:
    if route.fail_status is not None and (
        route.fail_times is None or request.hits <= route.fail_times
    ):
        return await send_response(writer, route.fail_status, b"scripted failure\n")
    if route.location is not None:
        status = route.status if 300 <= route.status < 400 else 302
        return await send_response(writer, status, b"", {"Location": route.location})
    body = route.data
    headers = {"Content-Type": "application/octet-stream", **route.headers}
    length = len(body) if route.content_length is None else route.content_length
    if length >= 0:
        headers["Content-Length"] = str(length)
    writer.write(response_head(route.status, headers))
    if route.reset_after is not None:
        writer.write(body[: route.reset_after])
        await writer.drain()
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return None
    if route.stall_after is not None:
        writer.write(body[: route.stall_after])
        await writer.drain()
        await asyncio.Event().wait()  # until the client gives up or the server stops
    if route.drip_chunk > 0:
        for start in range(0, len(body), route.drip_chunk):
            writer.write(body[start : start + route.drip_chunk])
            await writer.drain()
            await asyncio.sleep(route.drip_delay)
    else:
        writer.write(body)
    await writer.drain()
    return None


# payload helpers
def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def tar_bytes(*entries: tuple[str, bytes] | tarfile.TarInfo, gz: bool = False) -> bytes:
    """A tar archive of ``(name, content)`` regular files and raw ``TarInfo`` entries (links,
    devices: build them with :func:`tar_entry`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, content = entry
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A non-file tar entry: ``kind`` is ``tarfile.SYMTYPE``, ``LNKTYPE``, ``CHRTYPE``..."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def self_signed_cert(directory: Path, *, names: tuple[str, ...] = ("localhost",)) -> TLSFiles:
    """A self-signed certificate valid for 127.0.0.1, ::1 and ``names``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasm-agent test")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(cert=directory / "cert.pem", key=directory / "key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files
