"""A fake istiod: the demo's ADS server (SotW and Delta) on a background event loop.

:class:`FakeIstiod` is a synchronous facade over :class:`wasm_agent.demo.controlplane.ControlPlane`
running in its own thread, so synchronous tests (real Envoy) and asyncio tests can both drive
it. It keeps a snapshot per type URL and answers each stream's first request for a type with it;
:meth:`FakeIstiod.set_resources` updates the snapshot and pushes it to every stream subscribed
to the type. Every request is kept on its stream; tests can also push raw bytes (garbage) or
end streams. Responses leave one at a time, so a client that does not read holds it back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from tests.support.tls import TlsFiles
from wasm_agent.demo.controlplane import Abort, ControlPlane, Stream, pack

FakeStream = Stream
T = TypeVar("T")


def as_any(message: Message) -> any_pb2.Any:
    """Pack ``message`` into an ``Any`` with the type.googleapis.com prefix."""
    return pack({"": message})[""]


class FakeIstiod:
    """Start with ``with FakeIstiod() as istiod:``; ``istiod.address`` is ``127.0.0.1:PORT``,
    or ``unix:PATH`` with ``socket=PATH`` (pilot-agent's XDS socket; no TCP port then)."""

    def __init__(
        self,
        tls: TlsFiles | None = None,
        *,
        client_auth: bool = False,
        port: int = 0,
        socket: Path | None = None,
    ) -> None:
        credentials = None
        if tls is not None:
            credentials = grpc.ssl_server_credentials(
                [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
                root_certificates=tls.ca.read_bytes() if client_auth else None,
                require_client_auth=client_auth,
            )
        self.socket = socket
        address = f"unix:{socket}" if socket is not None else f"127.0.0.1:{port}"
        self.control = ControlPlane(address, credentials=credentials, nonce_prefix="nonce-")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    # -- server --------------------------------------------------------------------------
    def start(self) -> FakeIstiod:
        if not self._thread.is_alive():
            self._thread.start()
        self._run(self.control.start())
        return self

    def stop(self) -> None:
        """Stop serving; open streams end."""
        if self._thread.is_alive():
            self._run(self.control.stop(grace=None))

    def close(self) -> None:
        """Stop serving and end the background loop."""
        self.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def restart(self) -> None:
        """Stop and start again on the same port (streams end; snapshot kept)."""
        self.stop()
        self.start()

    @property
    def address(self) -> str:
        return self.control.address

    @property
    def port(self) -> int:
        return self.control.port

    def __enter__(self) -> FakeIstiod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------
    @property
    def streams(self) -> list[Stream]:
        return self.control.streams

    @property
    def snapshot(self) -> dict[str, tuple[str, dict[str, any_pb2.Any]]]:
        return self.control.snapshot

    @property
    def auto_respond(self) -> bool:
        return self.control.auto_respond

    @auto_respond.setter
    def auto_respond(self, value: bool) -> None:
        self.control.auto_respond = value

    # -- test API ------------------------------------------------------------------------
    def set_resources(
        self, type_url: str, resources: dict[str, Message | any_pb2.Any], version: str
    ) -> list[str]:
        """Replace the snapshot of ``type_url``; push it to subscribed streams; return nonces."""
        return self._run(self.control.set_resources(type_url, resources, version))

    def send_raw(self, data: bytes, stream: Stream | None = None) -> None:
        """Push arbitrary bytes as a response on ``stream`` (default: the newest open one)."""
        target = stream or self.open_streams()[-1]
        self._loop.call_soon_threadsafe(target.send, data)

    def send_response(self, message: Message, stream: Stream | None = None) -> None:
        self.send_raw(message.SerializeToString(), stream)

    def abort(self, stream: Stream, code: grpc.StatusCode, details: str = "") -> None:
        self._loop.call_soon_threadsafe(stream.send, Abort(code, details))

    def open_streams(self) -> list[Stream]:
        return self.control.open_streams()

    def all_requests(self, type_url: str | None = None) -> list[Any]:
        found = [r for s in list(self.control.streams) for r in list(s.requests)]
        return [r for r in found if type_url is None or r.type_url == type_url]

    def nacks(self, type_url: str | None = None) -> list[Any]:
        return [r for r in self.all_requests(type_url) if r.HasField("error_detail")]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        """Poll ``predicate`` (blocking) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise TimeoutError(f"fake istiod: {what or 'condition'} not met in {timeout}s")

    async def until(
        self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = ""
    ) -> Any:
        """Like :meth:`wait_for`, for asyncio tests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.02)
        raise TimeoutError(f"fake istiod: {what or 'condition'} not met in {timeout}s")


def sotw_response(
    type_url: str, resources: Sequence[Message | any_pb2.Any], version: str, nonce: str
) -> discovery_pb2.DiscoveryResponse:
    """A DiscoveryResponse with packed resources."""
    packed = pack({str(i): r for i, r in enumerate(resources)})
    return discovery_pb2.DiscoveryResponse(
        version_info=version, type_url=type_url, nonce=nonce, resources=packed.values()
    )
