"""Stream properties derived like Envoy's CEL attributes (``request.*``, ``response.*``,
``source.*``, ``destination.*``, ``connection.*``), for HTTP streams and TCP connections."""

from __future__ import annotations

import struct
from typing import Any

_I64 = struct.Struct("<q")


def _int(value: int) -> bytes:
    return _I64.pack(value)


def _address(defaults: dict[bytes, bytes], key: bytes, fallback: bytes) -> bytes:
    return defaults.get(key, fallback)


def connection_property(stream: Any, path: bytes) -> bytes | None:
    """``source``/``destination``/``connection`` attributes shared by HTTP and TCP."""
    props = stream.plugin.connection
    parts = path.split(b"\0")
    head, tail = parts[0], parts[1] if len(parts) > 1 else b""
    if head in (b"source", b"destination"):
        addr, port = props[head.decode()]
        if tail == b"address":
            return f"{addr}:{port}".encode()
        if tail == b"port":
            return _int(port)
        return None
    if head == b"connection" and tail == b"id":
        return _int(stream.connection_id)
    if head == b"connection_id":
        return _int(stream.connection_id)
    if head == b"connection" and tail == b"mtls":
        return b"\x00"
    return None


def http_property(stream: Any, path: bytes) -> bytes | None:
    """HTTP ``request.*`` and ``response.*`` attributes, then the connection's."""
    parts = path.split(b"\0")
    head = parts[0]
    if head == b"request":
        return _request(stream, parts[1:])
    if head == b"response":
        return _response(stream, parts[1:])
    return connection_property(stream, path)


def _request(stream: Any, rest: list[bytes]) -> bytes | None:
    headers = stream.request.headers
    if not rest:
        return None
    name = rest[0]
    if name == b"time":
        return _int(stream.start_ns)
    if name == b"headers" and len(rest) > 1:
        return headers.get(rest[1]) if headers is not None else None
    if headers is None:
        return None
    path = headers.get(b":path") or b""
    simple = {
        b"path": path,
        b"url_path": path.split(b"?", 1)[0],
        b"host": headers.get(b":authority"),
        b"method": headers.get(b":method"),
        b"scheme": headers.get(b":scheme"),
        b"referer": headers.get(b"referer"),
        b"useragent": headers.get(b"user-agent"),
        b"id": headers.get(b"x-request-id"),
        b"query": path.split(b"?", 1)[1] if b"?" in path else b"",
        b"protocol": b"HTTP/1.1",
    }
    if name in simple:
        return simple[name]
    if name in (b"size", b"total_size"):
        return _int(len(stream.request.out.body))
    return None


def _response(stream: Any, rest: list[bytes]) -> bytes | None:
    headers = stream.response.headers
    if not rest or headers is None:
        return None
    name = rest[0]
    if name == b"code":
        status = headers.get(b":status")
        return _int(int(status)) if status and status.isdigit() else None
    if name == b"headers" and len(rest) > 1:
        return headers.get(rest[1])
    if name == b"trailers" and len(rest) > 1:
        trailers = stream.response.trailers
        return trailers.get(rest[1]) if trailers is not None else None
    if name == b"code_details":
        return b"via_upstream"
    if name in (b"size", b"total_size"):
        return _int(len(stream.response.out.body))
    return None
