"""Find keyless signature evidence of an image in its registry (I/O, through the module's session).

Two places, both read with the module's own registry session (same credentials, deadline and
retries), every manifest and blob checked against its digest:

* cosign's tag layout: the ``sha256-<hex>.sig`` manifest (fetched by :mod:`cosign`); each
  simple-signing layer with a ``dev.sigstore.cosign/certificate`` annotation is evidence;
* OCI 1.1 referrers: ``GET /v2/<repo>/referrers/<digest>?artifactType=<bundle type>``; a
  registry without the API (404, 400, 405: Debian's docker-registry 2.8 answers 404) is read
  through the referrers tag schema instead, the index tagged ``sha256-<hex>``. Each referrer
  of artifact type ``application/vnd.dev.sigstore.bundle.v0.3+json`` (and, when annotated, the
  cosign signature predicate) is a manifest whose bundle layer is a Sigstore bundle.

Unreadable evidence is returned as :class:`keyless.Refused` (malformed), not raised, so a
valid signature elsewhere still counts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from typing import Any
from urllib.parse import quote

from wasm_agent.fetch import oci_layers
from wasm_agent.fetch.errors import ChecksumMismatch
from wasm_agent.fetch.keyless import Problem, Refused
from wasm_agent.fetch.sigstore_bundle import (
    BUNDLE_TYPES,
    BUNDLE_V03,
    CERTIFICATE_ANNOTATION,
    COSIGN_SIGN_PREDICATE,
    MAX_BUNDLE,
    SIMPLE_SIGNING,
    Evidence,
    EvidenceError,
    from_bundle,
    from_cosign_layer,
)

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"
MAX_INDEX = 1024 * 1024
MAX_REFERRERS = 16
MAX_PAYLOAD = 256 * 1024
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
NO_API = frozenset({400, 404, 405})

Found = list[Evidence | Refused]


# -- the tag layout ---------------------------------------------------------------------------


def keyless_layers(body: bytes) -> list[tuple[oci_layers.Descriptor, dict[str, Any]]]:
    """The simple-signing layers of a ``.sig`` manifest that carry a certificate."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return []
    layers = doc.get("layers") if isinstance(doc, dict) else None
    found = []
    for i, raw in enumerate(layers if isinstance(layers, list) else []):
        if not isinstance(raw, dict) or raw.get("mediaType") != SIMPLE_SIGNING:
            continue
        annotations = raw.get("annotations")
        if isinstance(annotations, dict) and annotations.get(CERTIFICATE_ANNOTATION):
            try:
                found.append(
                    (oci_layers.Descriptor.parse(raw, f"signature layer {i}"), annotations)
                )
            except oci_layers.LayoutError:
                continue
    return found


async def tag_evidence(session: Any, body: bytes, tag: str) -> Found:
    """Evidence of the keyless layers of the ``.sig`` manifest ``body``."""
    found: Found = []
    for desc, notes in keyless_layers(body)[:MAX_REFERRERS]:
        where = f"{tag} layer {desc.digest[:19]}"
        if desc.size > MAX_PAYLOAD:
            found.append(Refused(Problem.MALFORMED, f"{where}: payload over {MAX_PAYLOAD} bytes"))
            continue
        try:
            signature = base64.b64decode(
                str(notes.get(SIGNATURE_ANNOTATION, "")).strip(), validate=True
            )
            payload = await session.blob(desc, None)
            found.append(from_cosign_layer(payload, signature, notes, where))
        except (binascii.Error, ValueError, EvidenceError) as error:
            found.append(Refused(Problem.MALFORMED, f"{where}: {error}"))
        except ChecksumMismatch as error:
            found.append(Refused(Problem.MALFORMED, f"{where}: {error.cause}"))
    return found


# -- referrers --------------------------------------------------------------------------------


async def _get(session: Any, path: str, accept: str, cap: int, what: str) -> tuple[int, bytes]:
    """(status, body) of a GET under ``/v2/<repo>/``; 404/400/405 are answers, not errors."""

    async def attempt() -> tuple[int, bytes]:
        async with session.get(path, accept=accept) as resp:
            if resp.status_code in NO_API:
                return resp.status_code, b""
            if resp.status_code != 200:
                await session.fail(resp, "manifest", path)
            return 200, await session.read_capped(resp, cap, what)

    result: tuple[int, bytes] = await session.retrying(attempt)
    return result


async def referrer_descriptors(session: Any, digest: str) -> tuple[str, list[dict[str, Any]]]:
    """(where they came from, the bundle referrers of ``digest``): the referrers API, else
    the tag schema index ``sha256-<hex>``."""
    query = quote(BUNDLE_V03, safe="")
    status, body = await _get(
        session, f"referrers/{digest}?artifactType={query}", OCI_INDEX, MAX_INDEX, "referrers"
    )
    where = "the referrers API"
    if status != 200:
        tag = digest.replace(":", "-", 1)
        status, body = await _get(session, f"manifests/{tag}", OCI_INDEX, MAX_INDEX, "referrers")
        where = f"the referrers tag {tag}"
        if status != 200:
            return where, []
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return where, []
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    found = []
    for raw in manifests if isinstance(manifests, list) else []:
        if not isinstance(raw, dict) or raw.get("artifactType") not in BUNDLE_TYPES:
            continue
        annotations = raw.get("annotations")
        predicate = annotations.get(PREDICATE_ANNOTATION) if isinstance(annotations, dict) else None
        if predicate not in (None, COSIGN_SIGN_PREDICATE):
            continue  # an attestation (SBOM, provenance), not a signature
        found.append(raw)
    return where, found[:MAX_REFERRERS]


async def referrer_evidence(session: Any, digest: str) -> Found:
    """Evidence of every Sigstore bundle referring to ``digest``."""
    where, descriptors = await referrer_descriptors(session, digest)
    log.debug(
        "sigstore bundle referrers",
        extra={"digest": digest, "source": where, "count": len(descriptors)},
    )
    found: Found = []
    for raw in descriptors:
        referrer = str(raw.get("digest", ""))
        at = f"referrer {referrer[:19]} (from {where})"
        try:
            found.append(await _bundle(session, referrer, at))
        except EvidenceError as error:
            found.append(Refused(Problem.MALFORMED, f"{at}: {error}"))
        except ChecksumMismatch as error:
            found.append(Refused(Problem.MALFORMED, f"{at}: {error.cause}"))
    return found


async def _bundle(session: Any, referrer: str, where: str) -> Evidence:
    if not referrer.startswith("sha256:"):
        raise EvidenceError("the referrer is not named by a sha256 digest")
    status, body = await _get(
        session, f"manifests/{referrer}", OCI_MANIFEST, MAX_INDEX, "referrer manifest"
    )
    if status != 200:
        raise EvidenceError("the referrer manifest is missing")
    if "sha256:" + hashlib.sha256(body).hexdigest() != referrer:
        raise EvidenceError("the referrer manifest does not match its digest")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EvidenceError("the referrer manifest is not JSON") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    for i, raw in enumerate(layers if isinstance(layers, list) else []):
        if isinstance(raw, dict) and raw.get("mediaType") in BUNDLE_TYPES:
            try:
                desc = oci_layers.Descriptor.parse(raw, f"bundle layer {i}")
            except oci_layers.LayoutError as error:
                raise EvidenceError(str(error)) from None
            if desc.size > MAX_BUNDLE:
                raise EvidenceError(f"the bundle is over {MAX_BUNDLE} bytes")
            return from_bundle(await session.blob(desc, None), where)
    raise EvidenceError("the referrer has no Sigstore bundle layer")
