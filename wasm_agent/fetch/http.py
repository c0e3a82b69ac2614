"""Fetch a module over HTTP(S): retries, bounded redirects, size cap, unboxing, checksum.

One fetch is bounded by its deadline (``request.timeout`` or ``settings.default_fetch_timeout``),
which covers every attempt, redirect, backoff sleep and slow body. Each attempt (redirects
included) is also bounded by ``settings.http_request_timeout``. A 429 or 503 answer is retried
after the server's ``Retry-After`` (seconds or an HTTP date) instead of the backoff delay, unless
that would pass the deadline (then the fetch fails at once, saying so). The SSRF guard lives in the
transport (:mod:`wasm_agent.fetch.transport`), so every hop is checked when it connects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from contextlib import AsyncExitStack

import httpx

from wasm_agent.core.logs import redact_url
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch import retry as _retry
from wasm_agent.fetch.errors import (
    BlockedAddress,
    ChecksumMismatch,
    DownloadFailure,
    FetchError,
    InvalidModule,
    UnsupportedScheme,
)
from wasm_agent.fetch.model import WASM_MAGIC, FetchedModule, FetchRequest, Progress
from wasm_agent.fetch.model import normalize_sha256 as _normalize
from wasm_agent.fetch.retry import (
    RETRY_AFTER_STATUSES,
    Backoff,
    Deadline,
    RetriesExhausted,
    Retryable,
    ServerBackoff,
    retry_after,
    retryable_answer,
    with_retries,
)
from wasm_agent.fetch.transport import (
    TRANSPORT_ERRORS,
    AddressBlockedError,
    is_invalid_location,
    make_client,
    to_fetch_error,
    url_error_reason,
)
from wasm_agent.fetch.unbox import unbox

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "wasm-agent"}


class _Clients:
    """One verified and one unverified client, created on first use, closed together."""

    def __init__(self, settings: FetchSettings, stack: AsyncExitStack) -> None:
        self._settings = settings
        self._stack = stack
        self._clients: dict[bool, httpx.AsyncClient] = {}

    async def get(self, insecure: bool) -> httpx.AsyncClient:
        if insecure not in self._clients:
            client = make_client(self._settings, insecure=insecure)
            self._clients[insecure] = await self._stack.enter_async_context(client)
        return self._clients[insecure]


def _check_url(url: str, target: str, context: str = "") -> httpx.URL:
    """``target`` parsed (``url`` itself or a redirect from it), or a :class:`DownloadFailure`
    naming what is wrong but never quoting the URL's parts (a password may sit there)."""
    try:
        parsed = httpx.URL(target)
    except httpx.InvalidURL as exc:
        what = url_error_reason(str(exc))  # no quoted parts
        if "<redacted>@" in redact_url(target):  # an "@" past a "/", "?" or "#"
            what = f"{what}; user-info with '/', '?' or '#' must be percent-encoded"
        raise DownloadFailure(url, f"invalid URL ({what}){context}") from None
    if not parsed.host:
        raise DownloadFailure(url, f"invalid URL (no host){context}")
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        raise DownloadFailure(url, f"invalid URL (port {parsed.port} is not in 1-65535){context}")
    return parsed


def _host_port(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


async def _read_body(
    response: httpx.Response, url: str, max_size: int, progress: Progress | None
) -> bytes:
    """The whole body, refusing more than ``max_size`` bytes (announced or received)."""
    total: int | None = None
    announced = response.headers.get("content-length")
    if announced is not None and announced.strip().isdigit():
        total = int(announced)
        if total > max_size:
            raise DownloadFailure(url, f"module exceeds {max_size} bytes (Content-Length: {total})")
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_size:
            raise DownloadFailure(url, f"module exceeds {max_size} bytes (body still streaming)")
        if progress is not None:
            progress(len(body), total)
    return bytes(body)


async def _attempt(
    url: str,
    settings: FetchSettings,
    clients: _Clients,
    progress: Progress | None,
    hints: list[float],
) -> bytes:
    """One GET of ``url`` with its redirects, within ``settings.http_request_timeout``."""
    where = [""]  # which redirect hop is in flight, for messages
    try:
        async with asyncio.timeout(settings.http_request_timeout):
            return await _walk(url, settings, clients, progress, where, hints)
    except TimeoutError:
        cause = f"request timed out after {settings.http_request_timeout:g}s{where[0]}"
        raise Retryable(DownloadFailure(url, cause)) from None


async def _walk(
    url: str,
    settings: FetchSettings,
    clients: _Clients,
    progress: Progress | None,
    where: list[str],
    hints: list[float],
) -> bytes:
    """Follow redirects (bounded, loop-checked, http(s) only); transport errors, 429 and
    retryable 5xx statuses become :class:`Retryable` (``Retry-After`` goes to ``hints``)."""
    current = httpx.URL(url)
    seen = {str(current)}
    for hop in range(settings.max_redirects + 1):
        client = await clients.get(settings.is_insecure(_host_port(current)))
        where[0] = "" if hop == 0 else f" (redirected to {redact_url(str(current))})"
        try:
            async with client.stream("GET", current, headers=_HEADERS) as response:
                status = response.status_code
                if status in REDIRECT_STATUSES and "location" in response.headers:
                    target = current.join(response.headers["location"])
                    if target.scheme not in ("http", "https"):
                        raise DownloadFailure(
                            url, f"redirect to unsupported scheme {target.scheme!r}{where[0]}"
                        )
                    _check_url(url, str(target), " in a redirect")
                    if str(target) in seen:
                        raise DownloadFailure(
                            url, f"redirect loop at {redact_url(str(target))}{where[0]}"
                        )
                    log.debug(
                        "wasm module download redirected",
                        extra={"url": redact_url(url), "to": redact_url(str(target))},
                    )
                    seen.add(str(target))
                    current = target
                    continue
                if status != 200:
                    cause = f"HTTP status {status}{where[0]}"
                    wait = None
                    if status in RETRY_AFTER_STATUSES:
                        wait = retry_after(response.headers.get("retry-after"))
                    if wait is not None:
                        hints.append(wait)
                        cause = f"{cause} (Retry-After: {wait:g}s)"
                    failure = DownloadFailure(url, cause)
                    if retryable_answer(status):
                        raise Retryable(failure)
                    raise failure
                return await _read_body(response, url, settings.max_binary_size, progress)
        except AddressBlockedError as exc:
            raise BlockedAddress(url, f"{exc.cause}{where[0]}") from None
        except TRANSPORT_ERRORS as exc:
            error = to_fetch_error(url, exc)
            failure = DownloadFailure(url, f"{error.cause}{where[0]}")
            if is_invalid_location(exc):  # the same answer again: not retried
                raise failure from None
            raise Retryable(failure) from None
    raise DownloadFailure(url, f"too many redirects (more than {settings.max_redirects})")


async def download(
    url: str,
    settings: FetchSettings,
    deadline: float,
    progress: Progress | None = None,
    *,
    backoff: Backoff | None = None,
) -> bytes:
    """The raw body at ``url`` with Istio's retry rules, all within ``deadline`` seconds."""
    last: list[FetchError] = []
    hints: list[float] = []  # Retry-After answers, consumed by the backoff

    def on_retry(attempt: int, error: Exception, delay: float) -> None:
        log.info(
            "wasm module download failed, retrying",
            extra={
                "url": redact_url(url),
                "attempt": attempt,
                "cause": str(error),
                "backoff_s": round(delay, 3),
            },
        )

    async def attempt(number: int) -> bytes:
        try:
            return await _attempt(url, settings, clients, progress, hints)
        except Retryable as failure:
            last.append(failure.error)  # type: ignore[arg-type]
            raise

    timer = Deadline(deadline)
    try:
        async with AsyncExitStack() as stack, asyncio.timeout(deadline):
            clients = _Clients(settings, stack)
            return await with_retries(
                attempt,
                max_attempts=settings.http_max_retries,
                deadline=timer,
                backoff=ServerBackoff(base=backoff or _retry.DEFAULT_BACKOFF, hints=hints),
                on_retry=on_retry,
            )
    except RetriesExhausted as exc:
        cause = exc.last.cause if isinstance(exc.last, FetchError) else str(exc.last)
        if exc.deadline:
            cause = f"fetch deadline of {deadline:g}s would pass before the next retry; {cause}"
        plural = "s" if exc.attempts != 1 else ""
        raise DownloadFailure(url, f"{cause} (after {exc.attempts} attempt{plural})") from None
    except TimeoutError:
        detail = f"; last error: {last[-1].cause}" if last else ""
        raise DownloadFailure(url, f"fetch deadline of {deadline:g}s exceeded{detail}") from None


def _unbox_and_hash(raw: bytes, max_size: int, url: str) -> tuple[bytes, str]:
    data = unbox(raw, max_size, url=url)
    return data, hashlib.sha256(data).hexdigest()


async def fetch_http(
    request: FetchRequest,
    settings: FetchSettings,
    progress: Progress | None = None,
    *,
    backoff: Backoff | None = None,
) -> FetchedModule:
    """Download, unbox and verify an ``http(s)://`` module; raise a :class:`FetchError`."""
    url = request.url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise UnsupportedScheme(url, f"not an http(s) URL (scheme {scheme!r})")
    _check_url(url, url)
    deadline = request.timeout or settings.default_fetch_timeout
    raw = await download(url, settings, deadline, progress, backoff=backoff)
    data, digest = await asyncio.to_thread(_unbox_and_hash, raw, settings.max_binary_size, url)
    expected = _normalize(request.sha256)
    if expected is not None and expected != digest:
        raise ChecksumMismatch(url, f"sha256 mismatch: expected {expected}, got {digest}")
    if len(data) < 8 or data[:4] != WASM_MAGIC:
        raise InvalidModule(url, f"not a Wasm binary (starts with {data[:8].hex() or 'nothing'})")
    log.info(
        "wasm module downloaded",
        extra={"url": redact_url(url), "bytes": len(data), "sha256": digest},
    )
    return FetchedModule(url=url, data=data, sha256=digest, checksum=digest)
