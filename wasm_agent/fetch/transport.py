"""httpx clients for module fetches, with the SSRF guard enforced at connect time.

Every TCP connection a client opens goes through :class:`GuardedBackend`: the host is resolved
once, every resolved address (or the literal IP) is checked with
:meth:`FetchSettings.is_blocked`, and the socket is opened to one of the checked addresses. So
redirect hops and token realms are covered and DNS rebinding cannot slip past the check. TLS still
uses the URL's host name for SNI and certificate checks, and the Host header is unchanged.

Clients never follow redirects (callers walk them, bounded by ``settings.max_redirects``) and
ignore proxy environment variables (a proxy would connect on our behalf, past the guard).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable

import httpcore
import httpx

from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import BlockedAddress, DownloadFailure

log = logging.getLogger(__name__)


class GuardError(Exception):
    """Raised by :class:`GuardedBackend` before a socket is opened (not an httpx error)."""

    def __init__(self, host: str, cause: str) -> None:
        self.host = host
        self.cause = cause
        super().__init__(cause)


class AddressBlockedError(GuardError):
    """The host is, or resolves to, an address the SSRF guard refuses."""

    def __init__(self, host: str, address: str) -> None:
        self.address = address
        super().__init__(host, f"connection to {host} blocked: address {address} is not allowed")


class ResolveError(GuardError):
    """The host name does not resolve."""


# Everything a request can raise below HTTP: catch these around ``client.send``/``stream``,
# then ask :func:`is_retryable` (a blocked address is final) or :func:`to_fetch_error`.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, GuardError)


def is_retryable(exc: BaseException) -> bool:
    """True for transport failures worth another attempt (not for a blocked address)."""
    return isinstance(exc, httpx.TransportError | ResolveError)


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that resolves, checks every address, then connects to a checked IP."""

    def __init__(self, settings: FetchSettings, inner: httpcore.AsyncNetworkBackend | None = None):
        self._settings = settings
        self._inner = inner or httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """All addresses for ``host`` (the literal itself for an IP), each checked."""
        literal = _literal_ip(host)
        if literal is not None:
            addresses = [host.strip("[]")]
        else:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(timeout):
                    infos = await loop.getaddrinfo(
                        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                    )
            except TimeoutError:
                raise ResolveError(host, f"resolving {host} timed out") from None
            except (socket.gaierror, UnicodeError) as exc:
                raise ResolveError(host, f"cannot resolve host {host}: {exc}") from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not addresses:
                raise ResolveError(host, f"cannot resolve host {host}: no addresses")
        for address in addresses:
            if self._settings.is_blocked(address):
                log.warning(
                    "wasm fetch blocked by SSRF guard", extra={"host": host, "address": address}
                )
                raise AddressBlockedError(host, address)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port, timeout)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for module fetches")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.lru_cache(maxsize=4)
def _system_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The verifying context on the system trust store, built once per trust-store setting
    (loading the store costs tens of milliseconds, more under load)."""
    return ssl.create_default_context()


def tls_context(verify: bool | ssl.SSLContext = True) -> ssl.SSLContext:
    """The TLS context for a client: the system trust store (which honours ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR``, as Go does), no verification when ``verify`` is False, or ``verify``."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify:
        return _system_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connection pool connects through the guard."""

    def __init__(self, settings: FetchSettings, *, verify: bool | ssl.SSLContext = True) -> None:
        ctx = tls_context(verify)
        super().__init__(verify=ctx, trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ctx,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(settings),
        )


def make_client(
    settings: FetchSettings, *, insecure: bool = False, verify: ssl.SSLContext | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for fetching modules.

    No redirects followed, per-request timeout ``settings.http_request_timeout``, TLS verified
    against the system trust store unless ``insecure`` (callers pass
    ``settings.is_insecure(host)``), SSRF guard at connect time. ``verify`` replaces the trust
    store with a given context. Proxy variables and ``.netrc`` are ignored.
    """
    tls: bool | ssl.SSLContext = False if insecure else (verify if verify is not None else True)
    return httpx.AsyncClient(
        transport=GuardedTransport(settings, verify=tls),
        follow_redirects=False,
        timeout=httpx.Timeout(settings.http_request_timeout),
        trust_env=False,
    )


def _cause_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _os_error_text(exc: BaseException) -> str:
    """The message of ``exc``, else of the first ``OSError`` in its cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen).strip():
            return str(seen).strip()
        if isinstance(seen, OSError) and seen.errno is not None:
            return os.strerror(seen.errno)
        seen = seen.__cause__ or seen.__context__
    return "connection reset"


def url_error_reason(text: str) -> str:
    """The words of an httpx URL error before any part of the URL it quotes, lowercased
    ("Invalid port: 'PASS'" -> "invalid port"): a quoted part may be a password."""
    return text.split(":", 1)[0].split("'", 1)[0].strip().rstrip(".").lower()


def _invalid_location_text(exc: BaseException) -> str:
    """httpx's refusal of a Location ("Invalid URL in location header: Invalid port: 'PASS'.")
    as its reason alone, with the percent-encoding hint."""
    reason = url_error_reason(str(exc).partition(":")[2])
    hint = "if it holds user-info, '/', '?' and '#' in it must be percent-encoded"
    return f"invalid URL in a redirect's Location header ({reason + '; ' if reason else ''}{hint})"


def is_invalid_location(exc: BaseException) -> bool:
    """True for httpx's refusal of a redirect's ``Location`` it cannot parse. Its text quotes a
    part of that URL (a password, when user-info holds an unencoded '/', '?' or '#'), so it is
    never shown, and it is final: asking again gets the same answer."""
    return isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith("Invalid URL")


def describe_transport_error(exc: BaseException) -> str:
    """A short human cause for a transport-level exception (no URL, no credentials)."""
    if is_invalid_location(exc):
        return _invalid_location_text(exc)
    if isinstance(exc, GuardError):
        return exc.cause
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "request timed out"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        cause: BaseException | None = exc
        while cause is not None:  # find an errno in the chain ("All connection attempts failed")
            if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
                return "connection refused"
            cause = cause.__cause__ or cause.__context__
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return f"TLS certificate verification failed: {text}"
        if "refused" in text.lower() or "all connection attempts failed" in text.lower():
            return f"connection refused: {text}"
        if "SSL" in text or "TLS" in text:
            return f"TLS handshake failed: {text}"
        return f"connection failed: {text}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection closed by server mid-response: {exc}"
    if isinstance(exc, httpx.ReadError):
        return f"connection broken while reading: {_os_error_text(exc)}"
    return f"transport error: {_cause_text(exc)}"


def to_fetch_error(url: str, exc: BaseException, *, attempts: int | None = None) -> DownloadFailure:
    """Map a transport exception for ``url`` to ``DownloadFailure`` (``BlockedAddress``)."""
    if isinstance(exc, AddressBlockedError):
        return BlockedAddress(url, exc.cause)
    cause = describe_transport_error(exc)
    if attempts is not None and attempts > 1:
        cause = f"{cause} (after {attempts} attempts)"
    return DownloadFailure(url, cause)


__all__ = [
    "TRANSPORT_ERRORS",
    "AddressBlockedError",
    "GuardError",
    "GuardedBackend",
    "GuardedTransport",
    "ResolveError",
    "describe_transport_error",
    "is_invalid_location",
    "is_retryable",
    "make_client",
    "tls_context",
    "to_fetch_error",
    "url_error_reason",
]
