"""Fetch a Wasm module from an OCI registry (registry HTTP API v2, on httpx).

Every manifest and blob is checked against its digest (and size) before it is used, and the
expected checksum (the manifest digest) is compared before any layer is downloaded. Auth:
anonymous, Basic, or Bearer tokens scoped to the repository (:mod:`oci_auth`); credentials from
the pull secret, else ``$DOCKER_CONFIG/config.json``, else none. Plain HTTP and unverified TLS
only for insecure registries. Transport errors and 5xx (not 501/505/511) are retried with
backoff inside the fetch deadline. The HTTP side lives in :mod:`oci_http`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch import checks, oci_layers
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
    ManifestFailure,
    UnboxError,
)
from wasm_agent.fetch.model import FetchedModule, FetchRequest, Progress, normalize_sha256
from wasm_agent.fetch.oci_http import CHUNK, RegistryConnection
from wasm_agent.fetch.reference import InvalidReference, OciReference, parse_reference
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

    ``checksum`` of the result is the image manifest digest (hex), ``oci_digest`` the same with
    ``sha256:``. Raises :class:`FetchError` subclasses. ``backoff`` replaces the retry backoff
    (tests).
    """

    async def run(session: _RegistrySession) -> FetchedModule:
        return await session.pull(normalize_sha256(request.sha256), progress)

    return await _with_session(request, settings, backoff, run)


async def resolve_oci_digest(
    request: FetchRequest, settings: FetchSettings, *, backoff: Backoff | None = None
) -> str:
    """The image manifest digest (hex) ``request.url`` names now, without downloading layers.

    What :func:`fetch_oci` would report as ``checksum`` (indexes resolved the same way), so a
    cache can tell whether a tag still points at a module it holds (Istio's ``PrepareFetch``).
    """

    async def run(session: _RegistrySession) -> str:
        digest, _ = await session.resolve()
        return digest.removeprefix("sha256:")

    return await _with_session(request, settings, backoff, run)


async def _with_session(
    request: FetchRequest,
    settings: FetchSettings,
    backoff: Backoff | None,
    run: Callable[[_RegistrySession], Awaitable[T]],
) -> T:
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
                return await run(session)
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


class _RegistrySession(RegistryConnection):
    """Pull one image: manifests (index resolution), the expected checksum, the Wasm layer."""

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
        if expected is not None and expected != hexdigest:
            raise ChecksumMismatch(
                self.url,
                f"image manifest digest {digest} does not match the expected sha256 {expected}",
            )
        verified = await checks.verify_signature(self, digest, rule)  # before any layer
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
