"""A fake istiod: an ADS server (SotW and Delta) on grpcio that records every request.

It keeps a snapshot per type URL and answers each stream's first request for a type with it;
:meth:`FakeIstiod.set_resources` updates the snapshot and pushes it to every stream subscribed
to the type. Tests can also push raw bytes (garbage) or end streams. Runs on its own grpcio
thread pool, so synchronous tests (real Envoy) and asyncio tests can both drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from tests.support.tls import TlsFiles
from wasm_agent.xds.upstream import ADS_SERVICE

MAX_MESSAGE = 256 * 1024 * 1024
_CLOSE = object()


@dataclass
class _Abort:
    code: grpc.StatusCode
    details: str


@dataclass
class FakeStream:
    """One ADS stream as istiod sees it."""

    delta: bool
    metadata: dict[str, str]
    requests: list[Any] = field(default_factory=list)
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # (type_url, version, nonce)
    subscribed: set[str] = field(default_factory=set)
    queue: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1024))
    closed: bool = False
    peer_identity: list[bytes] = field(default_factory=list)
    yielded: int = 0  # responses handed to grpc (flow control holds the rest back)

    def send(self, item: Any) -> None:
        if not self.closed:
            self.queue.put(item)


def as_any(message: Message) -> any_pb2.Any:
    """Pack ``message`` into an ``Any`` with the type.googleapis.com prefix."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


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
        self.tls = tls
        self.client_auth = client_auth
        self.port = port
        self.socket = socket
        self.server: grpc.Server | None = None
        self.streams: list[FakeStream] = []
        self.snapshot: dict[str, tuple[str, dict[str, any_pb2.Any]]] = {}
        self.auto_respond = True
        self._nonces = itertools.count(1)
        self._lock = threading.Lock()
        self.on_request: Callable[[FakeStream, Any], None] | None = None

    # -- server --------------------------------------------------------------------------
    def start(self) -> FakeIstiod:
        from concurrent.futures import ThreadPoolExecutor

        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=300),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                lambda it, ctx: self._handle(False, it, ctx)
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                lambda it, ctx: self._handle(True, it, ctx)
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),)
        )
        address = self.address
        if self.tls is None:
            bound = self.server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(self.tls.server_key.read_bytes(), self.tls.server_cert.read_bytes())],
                root_certificates=self.tls.ca.read_bytes() if self.client_auth else None,
                require_client_auth=self.client_auth,
            )
            bound = self.server.add_secure_port(address, creds)
        if not bound:
            raise OSError(f"fake istiod cannot bind {address}")
        if self.socket is None:
            self.port = bound
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving; open streams end with UNAVAILABLE."""
        if self.server is not None:
            for stream in self.streams:
                stream.send(_CLOSE)
            self.server.stop(grace=None).wait(5)
            self.server = None

    def restart(self) -> None:
        """Stop and start again on the same port (streams end; snapshot kept)."""
        self.stop()
        self.start()

    @property
    def address(self) -> str:
        return f"unix:{self.socket}" if self.socket is not None else f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeIstiod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- streams -------------------------------------------------------------------------
    def _handle(self, delta: bool, requests: Iterable[bytes], context: grpc.ServicerContext):
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        stream = FakeStream(delta=delta, metadata=metadata)
        stream.peer_identity = list(context.peer_identities() or [])
        with self._lock:
            self.streams.append(stream)
        context.add_callback(lambda: self._closed(stream))
        reader = threading.Thread(target=self._read, args=(stream, requests), daemon=True)
        reader.start()
        while True:
            item = stream.queue.get()
            if item is _CLOSE:
                return
            if isinstance(item, _Abort):
                context.abort(item.code, item.details)
            stream.yielded += 1
            yield item

    def _closed(self, stream: FakeStream) -> None:
        stream.closed = True
        with contextlib.suppress(queue.Full):
            stream.queue.put_nowait(_CLOSE)

    def _read(self, stream: FakeStream, requests: Iterable[bytes]) -> None:
        kind = (
            discovery_pb2.DeltaDiscoveryRequest if stream.delta else discovery_pb2.DiscoveryRequest
        )
        try:
            for raw in requests:
                request = kind.FromString(raw)
                with self._lock:
                    stream.requests.append(request)
                if self.on_request is not None:
                    self.on_request(stream, request)
                if request.HasField("error_detail") or not self.auto_respond:
                    continue
                first = request.type_url not in stream.subscribed
                stream.subscribed.add(request.type_url)
                if first and request.type_url in self.snapshot:
                    self._send_snapshot(stream, request.type_url)
        except grpc.RpcError:
            pass
        finally:
            self._closed(stream)

    def _send_snapshot(self, stream: FakeStream, type_url: str) -> None:
        version, resources = self.snapshot[type_url]
        nonce = f"nonce-{next(self._nonces)}"
        if stream.delta:
            message = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=version, type_url=type_url, nonce=nonce
            )
            for name, resource in resources.items():
                message.resources.add(name=name, version=version, resource=resource)
        else:
            message = discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=type_url, nonce=nonce
            )
            message.resources.extend(resources.values())
        stream.sent.append((type_url, version, nonce))
        stream.send(message.SerializeToString())

    # -- test API ------------------------------------------------------------------------
    def set_resources(
        self, type_url: str, resources: dict[str, Message | any_pb2.Any], version: str
    ) -> list[str]:
        """Replace the snapshot of ``type_url``; push it to subscribed streams; return nonces."""
        packed = {
            name: r if isinstance(r, any_pb2.Any) else as_any(r) for name, r in resources.items()
        }
        self.snapshot[type_url] = (version, packed)
        nonces = []
        for stream in self.open_streams():
            if type_url in stream.subscribed:
                self._send_snapshot(stream, type_url)
                nonces.append(stream.sent[-1][2])
        return nonces

    def send_raw(self, data: bytes, stream: FakeStream | None = None) -> None:
        """Push arbitrary bytes as a response on ``stream`` (default: the newest open one)."""
        (stream or self.open_streams()[-1]).send(data)

    def send_response(self, message: Message, stream: FakeStream | None = None) -> None:
        self.send_raw(message.SerializeToString(), stream)

    def abort(self, stream: FakeStream, code: grpc.StatusCode, details: str = "") -> None:
        stream.send(_Abort(code, details))

    def open_streams(self) -> list[FakeStream]:
        with self._lock:
            return [s for s in self.streams if not s.closed]

    def all_requests(self, type_url: str | None = None) -> list[Any]:
        with self._lock:
            found = [r for s in self.streams for r in s.requests]
        return [r for r in found if type_url is None or r.type_url == type_url]

    def nacks(self, type_url: str | None = None) -> list[Any]:
        return [r for r in self.all_requests(type_url) if r.HasField("error_detail")]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        """Poll ``predicate`` (blocking) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise TimeoutError(f"fake istiod: {what or 'condition'} not met in {timeout}s")

    async def until(
        self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = ""
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
    return discovery_pb2.DiscoveryResponse(
        version_info=version,
        type_url=type_url,
        nonce=nonce,
        resources=[r if isinstance(r, any_pb2.Any) else as_any(r) for r in resources],
    )
