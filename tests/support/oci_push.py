"""Push Wasm images to a test registry the way users do.

* Wasm artifacts (``application/vnd.module.wasm.content.layer.v1+wasm``) with the ``oras``
  Python package (:func:`oras_push_wasm`), anonymously or with Basic auth.
* Docker-image and OCI-image formats, indexes / manifest lists, odd or broken manifests, and
  anything behind token auth with :class:`RawPusher`, a small registry API v2 client on httpx
  (oras cannot push to a token-auth registry: it reuses one token for every scope).

Builders return the exact bytes pushed, so tests know every digest.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_LAYER_ALT = "application/vnd.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def targz(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A gzipped tar of ``files`` (name -> bytes), plus ``symlinks`` (name -> target)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def manifest_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=3).encode()


@dataclass
class Pushed:
    """What a push produced: the manifest digest and bytes, and every blob pushed."""

    repo: str
    reference: str
    digest: str
    manifest: bytes
    blobs: dict[str, bytes]

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


class RawPusher:
    """Registry API v2 uploads with httpx (sync), with Basic or Bearer-token auth."""

    def __init__(
        self,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        verify: bool = False,
    ):
        self.base = httpx.URL(base_url)
        self.username, self.password = username, password
        self.client = httpx.Client(timeout=30.0, verify=verify)
        self._auth: dict[str, str] = {}  # repo -> Authorization header

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RawPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _authorize(self, repo: str, challenge: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if scheme.lower() == "basic":
            self._auth[repo] = self._basic()
            return
        query = {"service": params.get("service", ""), "scope": f"repository:{repo}:pull,push"}
        headers = {"authorization": self._basic()} if self.username else {}
        resp = self.client.get(params["realm"], params=query, headers=headers)
        resp.raise_for_status()
        body = resp.json()
        self._auth[repo] = "Bearer " + (body.get("token") or body["access_token"])

    def request(self, repo: str, method: str, url: httpx.URL | str, **kw: Any) -> httpx.Response:
        """Send with the repository's credentials, answering one auth challenge."""
        url = self.base.join(url)
        for _ in range(2):
            headers = dict(kw.pop("headers", {}) or {})
            if repo in self._auth:
                headers["authorization"] = self._auth[repo]
            resp = self.client.request(method, url, headers=headers, **kw)
            kw["headers"] = {k: v for k, v in headers.items() if k != "authorization"}
            if resp.status_code != 401:
                return resp
            self._authorize(repo, resp.headers.get("www-authenticate", ""))
        return resp

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` (monolithic POST + PUT) and return its digest."""
        data = bytes(data)
        digest = digest_of(data)
        start = self.request(repo, "POST", f"/v2/{repo}/blobs/uploads/")
        if start.status_code != 202:
            raise RuntimeError(f"upload start: {start.status_code} {start.text}")
        # REFERENCE.md 5: params= would replace the upload URL's own query (its state token).
        location = self.base.join(start.headers["location"]).copy_add_param("digest", digest)
        put = self.request(
            repo,
            "PUT",
            location,
            content=data,
            headers={"content-type": "application/octet-stream"},
        )
        if put.status_code != 201:
            raise RuntimeError(f"upload: {put.status_code} {put.text}")
        return digest

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest (or index) under a tag or digest; returns the registry's digest."""
        resp = self.request(
            repo,
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            content=body,
            headers={"content-type": media_type},
        )
        if resp.status_code != 201:
            raise RuntimeError(f"manifest push: {resp.status_code} {resp.text}")
        return resp.headers.get("docker-content-digest") or digest_of(body)

    # -- whole images --------------------------------------------------------------------------

    def push_image(
        self,
        repo: str,
        tag: str,
        layers: list[tuple[str, bytes]],
        *,
        manifest_type: str = OCI_MANIFEST,
        config: tuple[str, bytes] | None = None,
    ) -> Pushed:
        """Push layers (media type, bytes) and a config, then a manifest of ``manifest_type``."""
        if config is None:
            ctype = DOCKER_CONFIG if manifest_type == DOCKER_MANIFEST else OCI_CONFIG
            config = (ctype, json.dumps({"architecture": "amd64", "os": "linux"}).encode())
        layers = [(mt, bytes(data)) for mt, data in layers]
        blobs = {}
        for _, data in [config, *layers]:
            blobs[self.push_blob(repo, data)] = data
        doc = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": descriptor(config[0], config[1]),
            "layers": [descriptor(mt, data) for mt, data in layers],
        }
        body = manifest_bytes(doc)
        digest = self.push_manifest(repo, tag, body, manifest_type)
        return Pushed(repo, tag, digest, body, blobs)

    def push_docker_image(self, repo: str, tag: str, wasm: bytes, name: str = "plugin.wasm"):
        """Format 1: Docker manifest v2, last layer a tar.gz holding ``plugin.wasm``."""
        layer = targz({name: wasm})
        return self.push_image(repo, tag, [(DOCKER_LAYER, layer)], manifest_type=DOCKER_MANIFEST)

    def push_oci_image(self, repo: str, tag: str, wasm: bytes, name: str = "plugin.wasm"):
        """Format 2: OCI manifest, last layer ``application/vnd.oci.image.layer.v1.tar+gzip``."""
        return self.push_image(repo, tag, [(OCI_LAYER, targz({name: wasm}))])

    def push_wasm_artifact(self, repo: str, tag: str, wasm: bytes, media_type: str = WASM_LAYER):
        """Format 3: a Wasm artifact (config + one raw Wasm layer)."""
        return self.push_image(repo, tag, [(media_type, wasm)], config=(WASM_CONFIG, b"{}"))

    def push_index(
        self,
        repo: str,
        tag: str,
        entries: list[tuple[Pushed, dict[str, str] | None]],
        media_type: str = OCI_INDEX,
    ) -> Pushed:
        """Push an OCI index / Docker manifest list over already pushed manifests."""
        child_type = DOCKER_MANIFEST if media_type == DOCKER_LIST else OCI_MANIFEST
        manifests = []
        for pushed, platform in entries:
            child = json.loads(pushed.manifest).get("mediaType", child_type)
            entry = descriptor(child, pushed.manifest)
            if platform:
                entry["platform"] = platform
            manifests.append(entry)
        body = manifest_bytes({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})
        digest = self.push_manifest(repo, tag, body, media_type)
        return Pushed(repo, tag, digest, body, {})


def oras_push_wasm(
    host: str,
    repo: str,
    tag: str,
    wasm: bytes,
    workdir: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    media_type: str = WASM_LAYER,
) -> str:
    """Push a Wasm artifact with the ``oras`` package (plain HTTP); returns the manifest digest."""
    import oras.client

    workdir.mkdir(parents=True, exist_ok=True)
    module = workdir / "plugin.wasm"
    module.write_bytes(wasm)
    config = workdir / "config.json"
    config.write_text("{}")
    backend = "basic" if username else "token"
    client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend=backend)
    if username:
        client.auth.set_basic_auth(username, password or "")
    target = f"{host}/{repo}:{tag}"
    resp = client.push(
        target=target,
        files=[f"{module}:{media_type}"],
        manifest_config=f"{config}:{WASM_CONFIG}",
        disable_path_validation=True,
        quiet=True,
    )
    resp.raise_for_status()
    digest = resp.headers.get("docker-content-digest")
    if not digest:
        raise RuntimeError("oras push: no Docker-Content-Digest in the response")
    return digest
