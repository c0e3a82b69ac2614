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


def local_reply_headers(reply: LocalResponse) -> HeaderMap:
    """The headers of a plugin's local reply as Envoy 1.40 builds them (tests/conformance/
    golden/local_*.json): ``:status``, the plugin's headers in order; with a body,
    ``content-length`` set in place (appended if absent) and ``content-type: text/plain`` unless
    the plugin set one; with an empty body, the plugin's ``content-length`` and
    ``content-type`` dropped (the codec adds ``content-length: 0`` at the very end)."""
    headers = HeaderMap([(b":status", str(reply.status).encode())])
    for key, value in reply.headers:
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
