"""Fetch a Wasm module from an OCI registry (registry HTTP API v2, on httpx).

Every manifest and blob is checked against its digest (and size) before it is used, whatever
host served it. The expected checksum may be the manifest digest (compared before any layer is
downloaded) or the sha256 of the module itself (``sha256sum plugin.wasm``). Auth: anonymous,
Basic, or Bearer tokens scoped to the repository (:mod:`oci_auth`); credentials from the pull
secret, else ``$DOCKER_CONFIG/config.json``, including credential helpers
(:mod:`credential_helpers`). Hosts: mirrors from ``hosts.toml`` in order, then the registry
(:mod:`registry_hosts`); a failing mirror is skipped for the rest of the fetch. Plain HTTP and
unverified TLS only for insecure registries or hosts configured so. Transport errors and 5xx
(not 501/505/511) are retried with backoff inside the fetch deadline (mirrors: one attempt).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch import checks, oci_layers
from wasm_agent.fetch.credential_helpers import CredentialHelperError, CredentialSource
from wasm_agent.fetch.dockerconfig import DockerConfigError
from wasm_agent.fetch.errors import (
    AuthFailure,
    ChecksumMismatch,
    DownloadFailure,
    FetchError,
    ManifestFailure,
    UnboxError,
)
from wasm_agent.fetch.model import FetchedModule, FetchRequest, Progress, normalize_sha256
from wasm_agent.fetch.oci_http import CHUNK
from wasm_agent.fetch.reference import InvalidReference, OciReference, parse_reference
from wasm_agent.fetch.registry_hosts import (
    Endpoint,
    HostConnection,
    HostsConfigError,
    RegistryHosts,
    load_hosts,
)
from wasm_agent.fetch.retry import Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MANIFEST_SIZE = 4 * 1024 * 1024  # distribution's own limit for manifests


async def fetch_oci(
    request: FetchRequest,
    settings: FetchSettings,
    progress: Progress | None = None,
    *,
    backoff: Backoff | None = None,
) -> FetchedModule:
    """Pull the Wasm module named by ``request.url`` (``oci://...``).

    ``checksum`` of the result is what ``request.sha256`` matched: the image manifest digest
    (hex; also when no sha256 is given) or the module's own sha256; ``oci_digest`` is the
    manifest digest with ``sha256:``. Raises :class:`FetchError` subclasses. ``backoff``
    replaces the retry backoff (tests).
    """

    async def run(session: _ImagePull) -> FetchedModule:
        return await session.pull(normalize_sha256(request.sha256), progress)

    return await _with_session(request, settings, backoff, run)


async def resolve_oci_digest(
    request: FetchRequest, settings: FetchSettings, *, backoff: Backoff | None = None
) -> str:
    """The image manifest digest (hex) ``request.url`` names now, without downloading layers.

    What :func:`fetch_oci` would report as ``checksum`` (indexes resolved the same way), so a
    cache can tell whether a tag still points at a module it holds (Istio's ``PrepareFetch``).
    """

    async def run(session: _ImagePull) -> str:
        digest, _ = await session.resolve()
        return digest.removeprefix("sha256:")

    return await _with_session(request, settings, backoff, run)


async def _with_session(
    request: FetchRequest,
    settings: FetchSettings,
    backoff: Backoff | None,
    run: Callable[[_ImagePull], Awaitable[T]],
) -> T:
    url = request.url
    try:
        ref = parse_reference(url)
    except InvalidReference as exc:
        raise ManifestFailure(url, f"invalid image reference: {exc}") from None
    timeout = request.timeout or settings.default_fetch_timeout
    try:
        hosts = load_hosts(settings.registry_config_dir, ref.registry)
    except HostsConfigError as exc:
        raise DownloadFailure(
            url, f"registry host configuration for {ref.registry}: {exc}"
        ) from None
    source = CredentialSource(
        request.pull_secret,
        settings.docker_config_dir,
        ttl=settings.credential_helper_ttl,
        timeout=settings.credential_helper_timeout,
    )
    try:
        async with asyncio.timeout(timeout):
            for attempt in (1, 2):
                try:
                    async with _ImagePull(
                        url, ref, settings, hosts, source, timeout, backoff
                    ) as pull:
                        return await run(pull)
                except AuthFailure:
                    # A helper answer the registry refused is forgotten; one from the cache (an
                    # expired token) is worth asking the helper again for, once.
                    if not source.forget_cached() or attempt == 2:
                        raise
                    log.info(
                        "registry refused cached helper credentials; asking the helper again",
                        extra={"registry": ref.registry},
                    )
            raise AssertionError("unreachable")
    except TimeoutError:
        raise DownloadFailure(url, f"timed out after {timeout:g}s") from None
    except HostsConfigError as exc:  # a CA or client certificate file, loaded on first use
        raise DownloadFailure(
            url, f"registry host configuration for {ref.registry}: {exc}"
        ) from None


class _ImagePull:
    """Pull one image across the registry's hosts: each request goes to the first host with
    the capability it needs (``resolve`` for a tag, ``pull`` for a digest) that has not failed,
    falling back to the next on any fetch error; the last host's error is the fetch's."""

    def __init__(
        self,
        url: str,
        ref: OciReference,
        settings: FetchSettings,
        hosts: RegistryHosts,
        source: CredentialSource,
        timeout: float,
        backoff: Backoff | None,
    ) -> None:
        self.url, self.ref, self.settings, self.hosts = url, ref, settings, hosts
        self._source, self._timeout, self._backoff = source, timeout, backoff
        self._sessions: dict[int, _RegistrySession] = {}
        self._failed: set[int] = set()
        self.resolved_by: _RegistrySession | None = None

    async def __aenter__(self) -> _ImagePull:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self._sessions.values():
            await session.__aexit__(None, None, None)

    async def _session(self, index: int, endpoint: Endpoint) -> _RegistrySession:
        if index not in self._sessions:
            registry = endpoint.host if endpoint.mirror else self.ref.registry
            try:
                credentials = await self._source.for_registry(registry)
            except DockerConfigError as exc:
                raise AuthFailure(self.url, f"malformed {self._source.where}: {exc}") from None
            except CredentialHelperError as exc:
                raise AuthFailure(self.url, str(exc)) from None
            # A mirror gets one attempt per request: the next host is the retry.
            settings = (
                replace(self.settings, http_max_retries=1) if endpoint.mirror else self.settings
            )
            self._sessions[index] = _RegistrySession(
                self.url,
                self.ref,
                settings,
                credentials,
                self._timeout,
                self._backoff,
                endpoint=endpoint,
            )
        return self._sessions[index]

    async def _across(
        self, capability: str, op: Callable[[_RegistrySession], Awaitable[T]]
    ) -> tuple[T, _RegistrySession]:
        candidates = [
            (i, e)
            for i, e in enumerate(self.hosts.endpoints)
            if e.can(capability) and i not in self._failed
        ]
        if not candidates:
            raise ManifestFailure(
                self.url,
                f"no host configured for {self.ref.registry} may {capability} "
                f"({self.hosts.source})",
            )
        for number, (index, endpoint) in enumerate(candidates, 1):
            session = await self._session(index, endpoint)
            try:
                return await op(session), session
            except FetchError as exc:
                if number == len(candidates):
                    raise
                self._failed.add(index)
                log.warning(
                    "registry host failed, trying the next one",
                    extra={"registry": self.ref.registry, "host": endpoint.url, "error": exc.cause},
                )
        raise AssertionError("unreachable")

    async def manifest(
        self, reference: str, size: int | None = None
    ) -> tuple[str, oci_layers.Manifest]:
        capability = "pull" if reference.startswith("sha256:") else "resolve"
        (found, session) = await self._across(capability, lambda s: s.manifest(reference, size))
        self.resolved_by = self.resolved_by or session
        return found

    async def blob(self, desc: oci_layers.Descriptor, progress: Progress | None) -> bytes:
        data, _ = await self._across("pull", lambda s: s.blob(desc, progress))
        return data

    # -- the pull ------------------------------------------------------------------------------

    async def resolve(self) -> tuple[str, oci_layers.Manifest]:
        """The image manifest (``sha256:`` digest, parsed), through an index if there is one."""
        digest, manifest = await self.manifest(self.ref.reference)
        if manifest.is_index:
            try:
                entry = oci_layers.select_from_index(manifest)
            except oci_layers.LayoutError as exc:
                raise ManifestFailure(self.url, str(exc)) from None
            digest, manifest = await self.manifest(entry.digest, size=entry.size)
            if manifest.is_index:
                raise ManifestFailure(self.url, "index entry points to another index")
        return digest, manifest

    async def pull(self, expected: str | None, progress: Progress | None) -> FetchedModule:
        ref = self.ref
        log.info(
            "fetching wasm image",
            extra={"registry": ref.registry, "repository": ref.repository, "ref": ref.reference},
        )
        rule = checks.signature_rule(self.settings, self.url, ref)
        digest, manifest = await self.resolve()
        hexdigest = digest.removeprefix("sha256:")
        try:
            layer = oci_layers.choose_layer(manifest)
        except oci_layers.LayoutError as exc:
            raise ManifestFailure(self.url, str(exc)) from None
        if expected not in (None, hexdigest) and not layer.archive:
            # A raw Wasm layer's digest is the module's sha256: decide before downloading.
            self._check(expected, digest, layer.descriptor.digest.removeprefix("sha256:"))
        assert self.resolved_by is not None
        verified = await checks.verify_signature(self.resolved_by, digest, rule)  # before layers
        blob = await self.blob(layer.descriptor, progress)
        data, data_sha256 = await asyncio.to_thread(self._unpack, blob, layer)
        checksum = hexdigest
        if expected not in (None, hexdigest):
            checksum = self._check(expected, digest, data_sha256)
        module = FetchedModule(
            url=self.url,
            data=data,
            sha256=data_sha256,
            checksum=checksum,
            oci_digest=digest,
            verified_keys=verified,
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

    def _check(self, expected: str | None, digest: str, module_sha256: str) -> str:
        """``expected`` if it is the module's sha256, else :class:`ChecksumMismatch` showing
        both digests the artifact has."""
        if expected == module_sha256:
            return module_sha256
        raise ChecksumMismatch(
            self.url,
            f"expected sha256 {expected} is neither the image manifest digest {digest} nor the "
            f"module's sha256 {module_sha256} (sha256sum plugin.wasm)",
        )

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


class _RegistrySession(HostConnection):
    """One host's manifests and blobs, each checked against its digest."""

    async def manifest(
        self, reference: str, size: int | None = None
    ) -> tuple[str, oci_layers.Manifest]:
        """GET a manifest, verify its digest, parse it; returns (``sha256:`` digest, manifest)."""

        async def attempt() -> tuple[bytes, str, str]:
            async with self.get(f"manifests/{reference}", accept=oci_layers.ACCEPT) as resp:
                if resp.status_code != 200:
                    await self.fail(resp, "manifest", reference)
                body = await self.read_capped(resp, MAX_MANIFEST_SIZE, "manifest")
                return (
                    body,
                    resp.headers.get("content-type", ""),
                    resp.headers.get("docker-content-digest", ""),
                )

        body, content_type, header_digest = await self.retrying(attempt)
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
            async with self.get(f"blobs/{desc.digest}") as resp:
                if resp.status_code != 200:
                    await self.fail(resp, "blob", desc.digest)
                hasher = hashlib.sha256()
                buf = bytearray()
                async for chunk in resp.aiter_bytes(CHUNK):
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

        return await self.retrying(attempt)
