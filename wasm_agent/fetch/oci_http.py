"""HTTP plumbing for the OCI fetcher: one registry connection with auth, retries, redirects.

A :class:`RegistryConnection` owns one guarded httpx client (:mod:`transport`), the auth state
(:mod:`oci_auth`) and the retry budget of one fetch. Plain HTTP only for insecure registries
(tried over TLS first, like Docker); redirects (blob storage) are followed, bounded, without
downgrading HTTPS to HTTP and without sending registry credentials to another host.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from wasm_agent.core.logs import redact_url
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.dockerconfig import Credentials
from wasm_agent.fetch.errors import AuthFailure, DownloadFailure, ManifestFailure
from wasm_agent.fetch.oci_auth import RegistryAuth, parse_challenge, pull_scope
from wasm_agent.fetch.reference import OciReference
from wasm_agent.fetch.retry import (
    DEFAULT_BACKOFF,
    RETRY_AFTER_STATUSES,
    Backoff,
    Deadline,
    Retryable,
    ServerBackoff,
    retry_after,
    retryable_answer,
    with_retries,
)
from wasm_agent.fetch.transport import (
    TRANSPORT_ERRORS,
    AddressBlockedError,
    describe_transport_error,
    is_invalid_location,
    make_client,
    to_fetch_error,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK = 1 << 16
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

# Insecure registries found to speak plain HTTP (tried over TLS first, like Docker does).
_PLAIN_HTTP_HOSTS: set[str] = set()


def _tls_failure(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return isinstance(exc, httpx.ConnectError) and ("SSL" in str(exc) or "TLS" in str(exc))


class RegistryConnection:
    """One fetch's conversation with one registry (one client, one auth state, one deadline)."""

    def __init__(
        self,
        url: str,
        ref: OciReference,
        settings: FetchSettings,
        credentials: Credentials,
        timeout: float,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = url
        self.ref = ref
        self.settings = settings
        self.insecure = settings.is_insecure(ref.registry)
        self.scheme = "http" if self.insecure and ref.registry in _PLAIN_HTTP_HOSTS else "https"
        self.client = self._make_client()
        self.auth = RegistryAuth(url, credentials, allow_http_realm=self.insecure)
        self.scope = pull_scope(ref.repository)
        self.deadline = Deadline(timeout)
        self.backoff = backoff or DEFAULT_BACKOFF
        self.hints: list[float] = []  # Retry-After answers, consumed by the next backoff

    def _make_client(self) -> httpx.AsyncClient:
        return make_client(self.settings, insecure=self.insecure)

    async def __aenter__(self) -> RegistryConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    # -- requests -------------------------------------------------------------------------

    def _api_url(self, path: str) -> str:
        return f"{self.scheme}://{self.ref.registry}/v2/{self.ref.repository}/{path}"

    def get(self, path: str, accept: str | None = None) -> _Exchange:
        """``async with conn.get(path) as resp``: a GET under ``/v2/<repo>/``, streamed."""
        return _Exchange(self, path, accept)

    async def read_capped(self, resp: httpx.Response, cap: int, what: str) -> bytes:
        """The whole body of ``resp``, or :class:`ManifestFailure` past ``cap`` bytes."""
        buf = bytearray()
        async for chunk in resp.aiter_bytes(CHUNK):
            buf += chunk
            if len(buf) > cap:
                raise ManifestFailure(self.url, f"{what} is larger than {cap} bytes")
        return bytes(buf)

    async def fail(self, resp: httpx.Response, what: str, reference: str) -> None:
        """Raise the error for a non-200 answer (429 and retryable 5xx -> :class:`Retryable`,
        with the answer's ``Retry-After`` as the next backoff delay)."""
        status = resp.status_code
        detail = ""
        try:
            body = await self.read_capped(resp, 64 * 1024, "error body")
            codes = [e.get("code", "") for e in json.loads(body)["errors"]]
            detail = f" ({', '.join(c for c in codes if c)})" if any(codes) else ""
        except Exception:  # the error body is only decoration
            pass
        if status >= 500 or status == 429:
            cause = f"registry answered HTTP {status} for {what}"
            wait = None
            if status in RETRY_AFTER_STATUSES:
                wait = retry_after(resp.headers.get("retry-after"))
            if wait is not None:
                self.hints.append(wait)
                cause = f"{cause} (Retry-After: {wait:g}s)"
            error = DownloadFailure(self.url, cause)
            if retryable_answer(status):
                raise Retryable(error)
            raise error
        if status == 401:
            challenge = parse_challenge(resp.headers.get("www-authenticate", ""))
            if (
                challenge.params.get("error") == "insufficient_scope"
                or challenge.scheme == "bearer"
            ):
                who = "anonymous access" if self.auth.credentials.empty else "the credentials"
                raise AuthFailure(
                    self.url,
                    f"registry refused {who} for {self.scope} (HTTP 401{detail})",
                )
            raise AuthFailure(self.url, f"registry refused the credentials (HTTP 401{detail})")
        if status == 403:
            raise AuthFailure(
                self.url, f"access to {self.ref.repository} denied (HTTP 403{detail})"
            )
        if what == "manifest":
            if status == 404:
                raise ManifestFailure(
                    self.url, f"manifest {reference} not found (HTTP 404{detail})"
                )
            raise ManifestFailure(self.url, f"registry answered HTTP {status} for the manifest")
        raise DownloadFailure(self.url, f"registry answered HTTP {status} for {what} {reference}")

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` with Istio's retry rules (:mod:`wasm_agent.fetch.retry`)."""

        async def one(number: int) -> T:
            try:
                return await attempt()
            except Retryable:
                raise
            except AddressBlockedError as exc:
                raise to_fetch_error(self.url, exc) from None
            except TRANSPORT_ERRORS as exc:
                if is_invalid_location(exc):  # the same answer again: not retried
                    raise to_fetch_error(self.url, exc) from None
                if _tls_failure(exc):
                    raise self._tls_error(exc) from None
                raise Retryable(to_fetch_error(self.url, exc)) from None

        def on_retry(number: int, error: Exception, delay: float) -> None:
            log.info(
                "registry request failed, retrying",
                extra={
                    "registry": self.ref.registry,
                    "attempt": number,
                    "cause": getattr(error, "cause", str(error)),
                    "backoff_s": round(delay, 3),
                },
            )

        self.hints.clear()  # a wait another request was told never delays this one
        return await with_retries(
            one,
            max_attempts=self.settings.http_max_retries,
            deadline=self.deadline,
            backoff=ServerBackoff(base=self.backoff, hints=self.hints),
            on_retry=on_retry,
            url=self.url,
        )

    def _tls_error(self, exc: BaseException) -> DownloadFailure:
        hint = (
            ""
            if self.insecure
            else (
                "; if the registry serves plain HTTP or a self-signed certificate, list it in "
                "WASM_INSECURE_REGISTRIES"
            )
        )
        cause = describe_transport_error(exc)
        return DownloadFailure(self.url, f"TLS connection to {self.ref.registry}: {cause}{hint}")


class _Exchange:
    """``async with conn.get(path) as resp``: one GET with auth, redirects, TLS fallback."""

    def __init__(self, session: RegistryConnection, path: str, accept: str | None) -> None:
        self.session = session
        self.path = path
        self.accept = accept
        self.response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        self.response = await self._open()
        return self.response

    async def __aexit__(self, *exc: object) -> None:
        if self.response is not None:
            await self.response.aclose()

    async def _send(self, url: str | httpx.URL, authorization: str | None) -> httpx.Response:
        s = self.session
        headers = {"accept": self.accept} if self.accept else {}
        if authorization:
            headers["authorization"] = authorization
        return await s.client.send(s.client.build_request("GET", url, headers=headers), stream=True)

    async def _open(self) -> httpx.Response:
        s = self.session
        url = s._api_url(self.path)
        authorization = s.auth.header(s.scope)
        try:
            resp = await self._send(url, authorization)
        except TRANSPORT_ERRORS as exc:
            # An insecure registry may speak plain HTTP: fall back once, and remember. Only the
            # registry's own first request decides (not a token realm or a redirect target).
            if not (s.insecure and s.scheme == "https" and _tls_failure(exc)):
                raise
            s.scheme = "http"
            _PLAIN_HTTP_HOSTS.add(s.ref.registry)
            log.info("registry speaks plain HTTP", extra={"registry": s.ref.registry})
            url = s._api_url(self.path)
            resp = await self._send(url, authorization)
        if resp.status_code == 401:
            await resp.aread()
            await resp.aclose()
            authorization = await s.auth.answer(s.client, resp, s.scope)
            resp = await self._send(url, authorization)
        return await self._follow(resp, httpx.URL(url), authorization)

    async def _follow(
        self, resp: httpx.Response, url: httpx.URL, authorization: str | None
    ) -> httpx.Response:
        """Follow redirects (blob storage), bounded; no HTTPS->HTTP downgrade, no token leak."""
        s = self.session
        for _ in range(s.settings.max_redirects):
            if resp.status_code not in _REDIRECTS or "location" not in resp.headers:
                return resp
            await resp.aclose()
            try:
                target = url.join(resp.headers["location"])
            except (httpx.InvalidURL, ValueError):
                raise DownloadFailure(s.url, "registry redirected to an invalid URL") from None
            if target.scheme not in ("http", "https"):
                raise DownloadFailure(
                    s.url, f"registry redirected to a {target.scheme or 'relative'} URL"
                )
            if target.scheme == "http" and url.scheme == "https" and not s.insecure:
                raise DownloadFailure(
                    s.url, f"refusing redirect from HTTPS to plain HTTP ({redact_url(str(target))})"
                )
            if (target.host, target.port) != (url.host, url.port):
                authorization = None  # never hand registry credentials to storage hosts
            log.debug("following registry redirect", extra={"to": redact_url(str(target))})
            url = target
            resp = await self._send(url, authorization)
        if resp.status_code in _REDIRECTS:
            await resp.aclose()
            raise DownloadFailure(s.url, f"more than {s.settings.max_redirects} redirects")
        return resp
