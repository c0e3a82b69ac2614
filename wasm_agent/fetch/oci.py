"""Fetch a Wasm module from an OCI registry (registry HTTP API v2, on httpx).

Every manifest and blob is checked against its digest (and size) before it is used, and the
expected checksum (the manifest digest) is compared before any layer is downloaded. Auth:
anonymous, Basic, or Bearer tokens scoped to the repository (:mod:`oci_auth`); credentials from
the pull secret, else ``$DOCKER_CONFIG/config.json``, else none. Plain HTTP and unverified TLS
only for insecure registries. Transport errors and 5xx (not 501/505/511) are retried with
backoff inside the fetch deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from wasm_agent.agent.logs import redact_url
from wasm_agent.agent.settings import FetchSettings
from wasm_agent.fetch import oci_layers
from wasm_agent.fetch.dockerconfig import (
    Credentials,
    DockerConfigError,
    credentials_from_docker_config,
    credentials_from_pull_secret,
)
from wasm_agent.fetch.errors import (
    AuthFailure,
    ChecksumMismatch,
    DownloadFailure,
    FetchError,
    ManifestFailure,
    UnboxError,
)
from wasm_agent.fetch.model import FetchedModule, FetchRequest, Progress, normalize_sha256
from wasm_agent.fetch.oci_auth import RegistryAuth, parse_challenge, pull_scope
from wasm_agent.fetch.reference import InvalidReference, OciReference, parse_reference
from wasm_agent.fetch.retry import (
    DEFAULT_BACKOFF,
    Backoff,
    Deadline,
    RetriesExhausted,
    Retryable,
    retryable_status,
    with_retries,
)
from wasm_agent.fetch.transport import (
    TRANSPORT_ERRORS,
    AddressBlockedError,
    make_client,
    to_fetch_error,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # distribution's own limit for manifests
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 16

# Insecure registries found to speak plain HTTP (tried over TLS first, like Docker does).
_PLAIN_HTTP_HOSTS: set[str] = set()


async def fetch_oci(
    request: FetchRequest,
    settings: FetchSettings,
    progress: Progress | None = None,
    *,
    backoff: Backoff | None = None,
) -> FetchedModule:
    """Pull the Wasm module named by ``request.url`` (``oci://...``).

    ``checksum`` of the result is the image manifest digest (hex), ``oci_digest`` the same with
    ``sha256:``. Raises :class:`FetchError` subclasses. ``backoff`` replaces the retry backoff
    (tests).
    """
    url = request.url
    try:
        ref = parse_reference(url)
    except InvalidReference as exc:
        raise ManifestFailure(url, f"invalid image reference: {exc}") from None
    credentials = _credentials(request, settings, ref)
    timeout = request.timeout or settings.default_fetch_timeout
    try:
        async with asyncio.timeout(timeout):
            async with _RegistrySession(
                url, ref, settings, credentials, timeout, backoff
            ) as session:
                return await session.pull(normalize_sha256(request.sha256), progress)
    except TimeoutError:
        raise DownloadFailure(url, f"timed out after {timeout:g}s") from None


def _credentials(request: FetchRequest, settings: FetchSettings, ref: OciReference) -> Credentials:
    try:
        if request.pull_secret is not None:
            if not request.pull_secret.strip():
                raise AuthFailure(request.url, "pull secret is empty")
            return credentials_from_pull_secret(request.pull_secret, ref.registry)
        return credentials_from_docker_config(settings.docker_config_dir, ref.registry)
    except DockerConfigError as exc:
        where = "pull secret" if request.pull_secret is not None else "docker config"
        raise AuthFailure(request.url, f"malformed {where}: {exc}") from None


class _Retry(Exception):
    """A retryable failure inside the retry loop; ``error`` is what to report."""

    def __init__(self, error: FetchError) -> None:
        self.error = error


def _tls_failure(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return isinstance(exc, httpx.ConnectError) and ("SSL" in str(exc) or "TLS" in str(exc))


class _RegistrySession:
    """One fetch's conversation with one registry (one client, one auth state)."""

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
        self.client = make_client(settings, insecure=self.insecure)
        self.auth = RegistryAuth(url, credentials, allow_http_realm=self.insecure)
        self.scope = pull_scope(ref.repository)
        self.deadline = Deadline(timeout)
        self.backoff = backoff or DEFAULT_BACKOFF

    async def __aenter__(self) -> _RegistrySession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    # -- the pull ------------------------------------------------------------------------------

    async def pull(self, expected: str | None, progress: Progress | None) -> FetchedModule:
        ref = self.ref
        log.info(
            "fetching wasm image",
            extra={"registry": ref.registry, "repository": ref.repository, "ref": ref.reference},
        )
        digest, manifest = await self.manifest(ref.reference)
        if manifest.is_index:
            try:
                entry = oci_layers.select_from_index(manifest)
            except oci_layers.LayoutError as exc:
                raise ManifestFailure(self.url, str(exc)) from None
            digest, manifest = await self.manifest(entry.digest, size=entry.size)
            if manifest.is_index:
                raise ManifestFailure(self.url, "index entry points to another index")
        hexdigest = digest.removeprefix("sha256:")
        if expected is not None and expected != hexdigest:
            raise ChecksumMismatch(
                self.url,
                f"image manifest digest {digest} does not match the expected sha256 {expected}",
            )
        try:
            layer = oci_layers.choose_layer(manifest)
        except oci_layers.LayoutError as exc:
            raise ManifestFailure(self.url, str(exc)) from None
        blob = await self.blob(layer.descriptor, progress)
        data, data_sha256 = await asyncio.to_thread(self._unpack, blob, layer)
        module = FetchedModule(
            url=self.url,
            data=data,
            sha256=data_sha256,
            checksum=hexdigest,
            oci_digest=digest,
        )
        log.info(
            "fetched wasm image",
            extra={
                "registry": ref.registry,
                "repository": ref.repository,
                "digest": digest,
                "format": layer.format,
                "size": len(data),
            },
        )
        return module

    def _unpack(self, blob: bytes, layer: oci_layers.WasmLayer) -> tuple[bytes, str]:
        """The module bytes and their sha256 (runs in a worker thread)."""
        data = blob if not layer.archive else self._extract(blob, layer)
        return data, hashlib.sha256(data).hexdigest()

    def _extract(self, blob: bytes, layer: oci_layers.WasmLayer) -> bytes:
        try:
            return oci_layers.extract_plugin(blob, self.settings.max_binary_size)
        except oci_layers.TooLarge as exc:
            raise DownloadFailure(self.url, str(exc)) from None
        except oci_layers.ArchiveError as exc:
            raise UnboxError(self.url, f"{layer.format} image layer: {exc}") from None

    async def manifest(
        self, reference: str, size: int | None = None
    ) -> tuple[str, oci_layers.Manifest]:
        """GET a manifest, verify its digest, parse it; returns (``sha256:`` digest, manifest)."""

        async def attempt() -> tuple[bytes, str, str]:
            async with self._get(f"manifests/{reference}", accept=oci_layers.ACCEPT) as resp:
                if resp.status_code != 200:
                    await self._fail(resp, "manifest", reference)
                body = await self._read(resp, MAX_MANIFEST_SIZE, "manifest")
                return (
                    body,
                    resp.headers.get("content-type", ""),
                    resp.headers.get("docker-content-digest", ""),
                )

        body, content_type, header_digest = await self._retrying(attempt)
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and actual != reference:
            raise ChecksumMismatch(
                self.url, f"manifest bytes hash to {actual}, not the requested {reference}"
            )
        if header_digest.startswith("sha256:") and header_digest != actual:
            raise ChecksumMismatch(
                self.url,
                f"manifest bytes hash to {actual} but the registry says {header_digest}",
            )
        if size is not None and size != len(body):
            raise ChecksumMismatch(
                self.url, f"manifest {actual} is {len(body)} bytes, its descriptor says {size}"
            )
        try:
            return actual, oci_layers.parse_manifest(body, content_type)
        except oci_layers.LayoutError as exc:
            raise ManifestFailure(self.url, str(exc)) from None

    async def blob(self, desc: oci_layers.Descriptor, progress: Progress | None) -> bytes:
        """Download a blob, checking its size and digest while streaming."""
        cap = self.settings.max_binary_size
        if desc.size > cap:
            raise DownloadFailure(
                self.url, f"layer {desc.digest} is {desc.size} bytes, over the {cap} byte limit"
            )

        async def attempt() -> bytes:
            async with self._get(f"blobs/{desc.digest}") as resp:
                if resp.status_code != 200:
                    await self._fail(resp, "blob", desc.digest)
                hasher = hashlib.sha256()
                buf = bytearray()
                async for chunk in resp.aiter_bytes(_CHUNK):
                    buf += chunk
                    if len(buf) > desc.size:
                        raise ChecksumMismatch(
                            self.url,
                            f"layer {desc.digest} is larger than the {desc.size} bytes "
                            "its descriptor says",
                        )
                    hasher.update(chunk)
                    if progress is not None:
                        progress(len(buf), desc.size)
                if len(buf) != desc.size:
                    raise ChecksumMismatch(
                        self.url,
                        f"layer {desc.digest} is {len(buf)} bytes, its descriptor says {desc.size}",
                    )
                actual = "sha256:" + hasher.hexdigest()
                if actual != desc.digest:
                    raise ChecksumMismatch(
                        self.url, f"layer bytes hash to {actual}, not {desc.digest}"
                    )
                return bytes(buf)

        return await self._retrying(attempt)

    # -- HTTP plumbing -------------------------------------------------------------------------

    def _api_url(self, path: str) -> str:
        return f"{self.scheme}://{self.ref.registry}/v2/{self.ref.repository}/{path}"

    def _get(self, path: str, accept: str | None = None) -> _Exchange:
        return _Exchange(self, path, accept)

    async def _read(self, resp: httpx.Response, cap: int, what: str) -> bytes:
        buf = bytearray()
        async for chunk in resp.aiter_bytes(_CHUNK):
            buf += chunk
            if len(buf) > cap:
                raise ManifestFailure(self.url, f"{what} is larger than {cap} bytes")
        return bytes(buf)

    async def _fail(self, resp: httpx.Response, what: str, reference: str) -> None:
        """Raise the error for a non-200 answer (retryable 5xx -> :class:`_Retry`)."""
        status = resp.status_code
        detail = ""
        try:
            body = await self._read(resp, 64 * 1024, "error body")
            codes = [e.get("code", "") for e in json.loads(body)["errors"]]
            detail = f" ({', '.join(c for c in codes if c)})" if any(codes) else ""
        except Exception:  # the error body is only decoration
            pass
        if status >= 500:
            error = DownloadFailure(self.url, f"registry answered HTTP {status} for {what}")
            if retryable_status(status):
                raise _Retry(error)
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

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` with Istio's retry rules (:mod:`wasm_agent.fetch.retry`)."""

        async def one(number: int) -> T:
            try:
                return await attempt()
            except _Retry as retry:
                raise Retryable(retry.error) from None
            except AddressBlockedError as exc:
                raise to_fetch_error(self.url, exc) from None
            except TRANSPORT_ERRORS as exc:
                if _tls_failure(exc):
                    raise self._tls_error() from None
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

        try:
            return await with_retries(
                one,
                max_attempts=self.settings.http_max_retries,
                deadline=self.deadline,
                backoff=self.backoff,
                on_retry=on_retry,
            )
        except RetriesExhausted as exc:
            last = exc.last
            cause = last.cause if isinstance(last, FetchError) else str(last)
            if exc.deadline:
                cause = f"fetch deadline would pass before the next retry; {cause}"
            plural = "s" if exc.attempts != 1 else ""
            error_type = type(last) if isinstance(last, FetchError) else DownloadFailure
            raise error_type(self.url, f"{cause} (after {exc.attempts} attempt{plural})") from None

    def _tls_error(self) -> DownloadFailure:
        hint = (
            ""
            if self.insecure
            else (
                "; if the registry serves plain HTTP or a self-signed certificate, list it in "
                "WASM_INSECURE_REGISTRIES"
            )
        )
        return DownloadFailure(self.url, f"TLS connection to {self.ref.registry} failed{hint}")


class _Exchange:
    """``async with session._get(path) as resp``: one GET with auth, redirects, TLS fallback."""

    def __init__(self, session: _RegistrySession, path: str, accept: str | None) -> None:
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
        try:
            return await self._open_once()
        except TRANSPORT_ERRORS as exc:
            # An insecure registry may speak plain HTTP: fall back once, and remember.
            if s.insecure and s.scheme == "https" and _tls_failure(exc):
                s.scheme = "http"
                _PLAIN_HTTP_HOSTS.add(s.ref.registry)
                log.info("registry speaks plain HTTP", extra={"registry": s.ref.registry})
                return await self._open_once()
            raise

    async def _open_once(self) -> httpx.Response:
        s = self.session
        url = s._api_url(self.path)
        authorization = s.auth.header(s.scope)
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
