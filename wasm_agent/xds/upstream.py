"""The connection to istiod: channel options, TLS/mTLS, bearer token and stream metadata.

One ``grpc.aio`` channel is shared by every Envoy stream; it is rebuilt (for new streams) when
the CA, certificate or key files change, so rotated credentials are picked up without a restart.
The bearer token is read from its file for every new stream (tokens rotate) and is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import grpc
import grpc.aio

from wasm_agent.core.errors import WasmAgentError

log = logging.getLogger(__name__)

Metadata: TypeAlias = list[tuple[str, str | bytes]]
ChannelOptions: TypeAlias = list[tuple[str, int | str]]

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SOTW_METHOD = f"/{ADS_SERVICE}/StreamAggregatedResources"
DELTA_METHOD = f"/{ADS_SERVICE}/DeltaAggregatedResources"

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

# Envoy-side metadata that never goes upstream: credentials, hop-by-hop/transport headers,
# Envoy's internal headers, gRPC reserved keys. Everything else Envoy sends is forwarded.
_DROPPED_METADATA = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "user-agent",
        "te",
        "content-type",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "forwarded",
    }
)
_DROPPED_PREFIXES = (":", "grpc-", "x-envoy-", "x-forwarded-", "x-request-id")


class UpstreamError(WasmAgentError, RuntimeError):
    """The upstream connection cannot be configured (unreadable CA, key, token file ...)."""


def grpc_target(address: str) -> str:
    """Check the ``address`` setting and return it as the grpc channel target (unchanged).

    Accepted: ``unix:PATH`` (relative to the working directory or absolute, as pilot-agent's
    ``unix:./etc/istio/proxy/XDS``), ``unix:///ABSOLUTE``, ``HOST:PORT``, ``[IPv6]:PORT`` and
    ``dns:[//AUTHORITY/]HOST:PORT``. Over a Unix socket, TLS checks the server certificate
    against ``localhost`` unless ``server_name`` is set. Raises :class:`UpstreamError`.
    """
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if path.startswith("//") and not path.startswith("///"):
            raise UpstreamError(
                f"address: unix://PATH needs an absolute path (unix:///PATH), got {address!r}"
            )
        if not path.removeprefix("//"):
            raise UpstreamError(f"address: unix: needs a socket path, got {address!r}")
        return address
    host_port = address
    if address.startswith("dns:"):
        rest = address[len("dns:") :]
        host_port = rest[2:].partition("/")[2] if rest.startswith("//") else rest
    host, _, port = host_port.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not host or not port.isdigit() or (":" in host and not bracketed):
        raise UpstreamError(f"address: expected unix:PATH or HOST:PORT, got {address!r}")
    if not 0 < int(port) < 65536:
        raise UpstreamError(f"address: port {port} is out of range in {address!r}")
    return address


@dataclass(frozen=True)
class UpstreamSettings:
    """How to reach istiod: ``address`` is checked by :func:`grpc_target`."""

    address: str
    plaintext: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token_file: Path | None = None
    server_name: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0

    def __post_init__(self) -> None:
        grpc_target(self.address)
        if self.plaintext and (self.ca_file or self.cert_file or self.key_file or self.token_file):
            raise UpstreamError("--plaintext excludes --tls-ca/--tls-cert/--tls-key/--token-file")
        if not self.plaintext and self.ca_file is None:
            raise UpstreamError("TLS to istiod needs --tls-ca FILE (or --plaintext)")
        if (self.cert_file is None) != (self.key_file is None):
            raise UpstreamError("--tls-cert and --tls-key go together")


def filter_downstream_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    """Envoy's invocation metadata minus what must not leak upstream."""
    kept: Metadata = []
    for key, value in metadata or ():
        name = key.lower()
        if name in _DROPPED_METADATA or name.startswith(_DROPPED_PREFIXES):
            continue
        kept.append((name, value))
    return kept


def channel_options(settings: UpstreamSettings) -> ChannelOptions:
    """grpc channel arguments for the istiod hop."""
    options: ChannelOptions = [
        ("grpc.max_receive_message_length", settings.max_message_size),
        ("grpc.max_send_message_length", settings.max_message_size),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.enable_retries", 0),
    ]
    if settings.server_name:
        options.append(("grpc.ssl_target_name_override", settings.server_name))
        options.append(("grpc.default_authority", settings.server_name))
    return options


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise UpstreamError(f"cannot read {what} {path}: {error.strerror}") from None


class _Channel:
    def __init__(self, channel: grpc.aio.Channel, fingerprint: tuple[bytes | None, ...]) -> None:
        self.channel = channel
        self.fingerprint = fingerprint
        self.users = 0
        self.retired = False


class Upstream:
    """Opens ADS streams to istiod with the current credentials."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._current: _Channel | None = None
        self._all: set[_Channel] = set()

    def _credentials(self) -> tuple[grpc.ChannelCredentials, tuple[bytes | None, ...]]:
        s = self.settings
        ca = _read(s.ca_file, "CA file")
        cert = _read(s.cert_file, "certificate file")
        key = _read(s.key_file, "key file")
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        return creds, (ca, cert, key)

    def _channel(self) -> _Channel:
        s = self.settings
        if s.plaintext:
            if self._current is None:
                channel = grpc.aio.insecure_channel(s.address, options=channel_options(s))
                self._current = _Channel(channel, ())
                self._all.add(self._current)
            return self._current
        creds, fingerprint = self._credentials()
        if self._current is not None and self._current.fingerprint == fingerprint:
            return self._current
        if self._current is not None:
            log.info("istiod credentials changed; new streams use a new channel")
            self._retire(self._current)
        channel = grpc.aio.secure_channel(s.address, creds, options=channel_options(s))
        self._current = _Channel(channel, fingerprint)
        self._all.add(self._current)
        return self._current

    def _retire(self, holder: _Channel) -> None:
        holder.retired = True
        if holder.users == 0:
            self._all.discard(holder)
            _close_soon(holder.channel)

    def stream_metadata(
        self, downstream: Iterable[tuple[str, str | bytes]] | None = ()
    ) -> Metadata:
        """Metadata for a new upstream stream: Envoy's (filtered), ``XDS_HEADER_*``, token."""
        configured = self.settings.headers
        metadata = [
            (k, v) for k, v in filter_downstream_metadata(downstream) if k not in configured
        ]
        metadata.extend(configured.items())  # XDS_HEADER_* win over Envoy's own values
        token = _read(self.settings.token_file, "token file")
        if token is not None:
            token_text = token.decode("utf-8", "replace").strip()
            if token_text:
                metadata.append(("authorization", f"Bearer {token_text}"))
        return metadata

    def open(
        self, method: str, downstream_metadata: Iterable[tuple[str, str | bytes]] | None = ()
    ) -> tuple[grpc.aio.StreamStreamCall[bytes, bytes], Callable[[], None]]:
        """Start one bidirectional stream; returns ``(call, done)``: call ``done()`` when over."""
        metadata = self.stream_metadata(downstream_metadata)
        holder = self._channel()
        multicallable: grpc.aio.StreamStreamMultiCallable[bytes, bytes]
        multicallable = holder.channel.stream_stream(
            method, request_serializer=None, response_deserializer=None
        )
        call = multicallable(metadata=tuple(metadata))
        holder.users += 1
        released = False

        def done() -> None:
            nonlocal released
            if released:
                return
            released = True
            holder.users -= 1
            if holder.retired and holder.users == 0:
                self._all.discard(holder)
                _close_soon(holder.channel)

        return call, done

    async def close(self) -> None:
        """Close every channel."""
        for holder in list(self._all):
            await holder.channel.close(grace=None)
        self._all.clear()
        self._current = None


def _close_soon(channel: grpc.aio.Channel) -> None:
    with contextlib.suppress(RuntimeError):  # no loop: the process is ending anyway
        asyncio.get_running_loop().create_task(channel.close(grace=None))
