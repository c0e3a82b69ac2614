"""What a hop received (``Message``) and a plugin's local response (``LocalResponse``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wasm_agent.host.maps import HeaderMap


@dataclass
class Message:
    """What one hop received: headers (None: nothing yet), body, trailers, end of stream."""

    headers: HeaderMap | None = None
    body: bytearray = field(default_factory=bytearray)
    trailers: HeaderMap | None = None
    complete: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "headers": self.headers.pairs() if self.headers is not None else None,
            "body": bytes(self.body).decode("utf-8", "replace"),
            "trailers": self.trailers.pairs() if self.trailers is not None else None,
            "complete": self.complete,
        }


@dataclass
class LocalResponse:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    details: str
    grpc_status: int


# gRPC's HTTP-status mapping (Envoy's Grpc::Utility::httpToGrpcStatus); others: UNKNOWN (2).
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def is_grpc_request(headers: HeaderMap) -> bool:
    """Envoy's ``Grpc::Common::isGrpcRequestHeaders``: a gRPC content-type."""
    value = headers.get(b"content-type") or b""
    return value == b"application/grpc" or value.startswith(
        (b"application/grpc+", b"application/grpc;")
    )


def set_header(headers: HeaderMap, key: bytes, value: bytes) -> None:
    """Envoy's ``setReference``/``setCopy``: the first entry's value replaced in place (later
    ones dropped), else appended."""
    for index, (name, _) in enumerate(headers.entries):
        if name == key:
            kept = [e for i, e in enumerate(headers.entries) if i <= index or e[0] != key]
            kept[index] = (key, value)
            headers.entries = kept
            return
    headers.add(key, value)


def _percent_encode(text: bytes) -> bytes:
    """Envoy's ``PercentEncoding::encode`` of a grpc-message (``%`` and non-printables)."""
    return b"".join(
        b"%%%02X" % c if c < 0x20 or c > 0x7E or c == 0x25 else bytes((c,)) for c in text
    )


def grpc_reply_headers(reply: LocalResponse) -> HeaderMap:
    """A local reply to a gRPC request, as Envoy 1.40 turns it into a trailers-only response
    (tests/conformance/golden/local_grpc*.json): ``:status: 200``, the plugin's headers, then
    ``content-type: application/grpc``, ``grpc-status`` (the plugin's, else the HTTP status
    mapped) and ``grpc-message`` (the body, percent-encoded; none when empty), each replacing a
    plugin header of that name in place. The body is not sent."""
    headers = HeaderMap([(b":status", b"200")])
    for key, value in reply.headers:
        if key.lower() != b":status":
            headers.add(key, value)
    status = reply.grpc_status if reply.grpc_status >= 0 else HTTP_TO_GRPC.get(reply.status, 2)
    set_header(headers, b"content-type", b"application/grpc")
    set_header(headers, b"grpc-status", str(status).encode())
    body = reply.body[:-1] if reply.body.endswith(b"\n") else reply.body
    if body:
        set_header(headers, b"grpc-message", _percent_encode(body))
    return headers


def local_reply_headers(reply: LocalResponse) -> HeaderMap:
    """The headers of a plugin's local reply as Envoy 1.40 builds them (tests/conformance/
    golden/local_*.json): ``:status``, the plugin's headers in order; with a body,
    ``content-length`` set in place (appended if absent) and ``content-type: text/plain`` unless
    the plugin set one; with an empty body, the plugin's ``content-length`` and
    ``content-type`` dropped (the codec adds ``content-length: 0`` at the very end)."""
    headers = HeaderMap([(b":status", str(reply.status).encode())])
    for key, value in reply.headers:
        if key.lower() != b":status":  # the reply's status wins (Envoy 1.40)
            headers.add(key, value)
    if not reply.body:
        headers.remove(b"content-length")
        headers.remove(b"content-type")
        return headers
    length = str(len(reply.body)).encode()
    if headers.get(b"content-length") is None:
        headers.add(b"content-length", length)
    else:
        first = True
        kept = []
        for key, value in headers.entries:
            if key == b"content-length":
                if first:
                    kept.append((key, length))
                first = False
                continue
            kept.append((key, value))
        headers.entries = kept
    if headers.get(b"content-type") is None:
        headers.add(b"content-type", b"text/plain")
    return headers
