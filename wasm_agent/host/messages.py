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
