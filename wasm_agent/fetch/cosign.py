"""Verify cosign signatures of OCI modules (``cosign sign --key``, and keyless).

cosign stores the signatures of image ``repo@sha256:<hex>`` as an OCI image manifest tagged
``sha256-<hex>.sig`` in the same repository. Each layer of media type
``application/vnd.dev.cosign.simplesigning.v1+json`` is a *simple signing* payload::

    {"critical":{"identity":{"docker-reference":"<registry/repo>"},
                 "image":{"docker-manifest-digest":"sha256:<hex>"},
                 "type":"cosign container image signature"},"optional":null}

and carries the base64 signature of those exact bytes in the layer annotation
``dev.cosignproject.cosign/signature`` (ECDSA P-256 over SHA-256, ASN.1 DER; or Ed25519).
The manifest and every payload are fetched through the module's own registry session (same
auth, same deadline) and checked against their digests; a module passes when one payload is
signed by one of the policy rule's keys, names the module's manifest digest and its
repository. Anything else is a :class:`SignatureFailure` naming the repository and the reason.

Rules with ``keyless`` entries also accept keyless signatures (Fulcio certificate, Rekor
entry), found in the same ``.sig`` manifest or as Sigstore bundle referrers
(:mod:`referrers`) and verified offline (:mod:`keyless`); any one valid signature of either
kind passes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from wasm_agent.core.metrics import REGISTRY
from wasm_agent.core.settings import VerifyPolicy
from wasm_agent.fetch import oci_layers
from wasm_agent.fetch.errors import ChecksumMismatch, FetchError, SignatureFailure
from wasm_agent.fetch.keyless import KeylessIdentity, judge
from wasm_agent.fetch.reference import OciReference
from wasm_agent.fetch.referrers import referrer_evidence, tag_evidence
from wasm_agent.fetch.sigstore_bundle import simple_signing_problem
from wasm_agent.fetch.trust_policy import PublicKey, Rule, TrustPolicy

log = logging.getLogger(__name__)

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
MAX_SIGNATURE_MANIFEST = 1024 * 1024
MAX_PAYLOAD = 256 * 1024
MAX_SIGNATURES = 64

SIGNATURE_VERIFICATIONS = REGISTRY.counter(
    "wasm_signature_verification_count",
    "Cosign signature verifications of OCI modules, by result.",
    labels=("result",),
)


class Reason(enum.StrEnum):
    """Why a module's signature was refused (also the metric's result label)."""

    NO_RULE = "no_rule"
    NO_SIGNATURE = "no_signature"
    WRONG_KEY = "wrong_key"
    DIGEST_MISMATCH = "digest_mismatch"
    IDENTITY_MISMATCH = "identity_mismatch"
    MALFORMED = "malformed"
    TAMPERED = "tampered"
    # keyless (Fulcio certificate + Rekor entry, docs/signing.md)
    UNTRUSTED_CHAIN = "untrusted_chain"
    ISSUER_MISMATCH = "issuer_mismatch"
    EXPIRED_CERTIFICATE = "expired_certificate"
    MISSING_LOG_PROOF = "missing_log_proof"
    INVALID_LOG_PROOF = "invalid_log_proof"


SIGNATURE_VERIFICATIONS.preset(result=("success", "error", *Reason))  # at 0 from the start


_WORDS = {
    Reason.NO_RULE: "no verify-policy rule",
    Reason.NO_SIGNATURE: "no signature",
    Reason.WRONG_KEY: "wrong key",
    Reason.DIGEST_MISMATCH: "digest mismatch",
    Reason.IDENTITY_MISMATCH: "identity mismatch",
    Reason.MALFORMED: "malformed signature",
    Reason.TAMPERED: "tampered signature payload",
    Reason.UNTRUSTED_CHAIN: "untrusted chain",
    Reason.ISSUER_MISMATCH: "issuer mismatch",
    Reason.EXPIRED_CERTIFICATE: "expired certificate at integrated time",
    Reason.MISSING_LOG_PROOF: "missing log proof",
    Reason.INVALID_LOG_PROOF: "invalid log proof",
}


def signature_failure(url: str, name: str, reason: Reason, detail: str) -> SignatureFailure:
    """The error for ``reason``; ``.reason`` holds the :class:`Reason`."""
    error = SignatureFailure(
        url, f"signature check failed for repository {name}: {_WORDS[reason]}: {detail}"
    )
    error.reason = reason  # type: ignore[attr-defined]
    return error


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of ``sha256:<hex>``: ``sha256-<hex>.sig``."""
    return digest.replace(":", "-", 1) + ".sig"


def rule_for(policy: VerifyPolicy, url: str, ref: OciReference) -> Rule:
    """The policy rule for ``ref``'s repository; no matching rule is a failure (fail closed)."""
    if not isinstance(policy, TrustPolicy):  # FetchSettings names it by a core protocol
        raise TypeError(f"verify policy: expected a TrustPolicy, got {type(policy).__name__}")
    rule = policy.rule_for(ref.name)
    if rule is None:
        SIGNATURE_VERIFICATIONS.inc(result=Reason.NO_RULE.value)
        raise signature_failure(
            url, ref.name, Reason.NO_RULE, f"the repository matches no rule of {policy.source}"
        )
    return rule


# -- pure parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureLayer:
    """One simple-signing layer: the payload descriptor and its base64 signature annotation."""

    descriptor: oci_layers.Descriptor
    signature: str


def parse_signature_manifest(body: bytes) -> list[SignatureLayer]:
    """The simple-signing layers of a ``.sig`` manifest (others are ignored).

    Raises :class:`oci_layers.LayoutError` for a manifest that is not a JSON image manifest.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise oci_layers.LayoutError("signature manifest is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise oci_layers.LayoutError("signature manifest is not a schemaVersion 2 manifest")
    media_type = doc.get("mediaType", oci_layers.OCI_MANIFEST)
    if media_type not in oci_layers.IMAGE_TYPES:
        raise oci_layers.LayoutError(f"signature manifest has media type {media_type!r}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise oci_layers.LayoutError("signature manifest has no 'layers' list")
    found = []
    for i, raw in enumerate(layers):
        if not isinstance(raw, dict) or raw.get("mediaType") != SIMPLE_SIGNING:
            continue
        desc = oci_layers.Descriptor.parse(raw, f"signature layer {i}")
        annotations = raw.get("annotations")
        signature = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else ""
        found.append(SignatureLayer(desc, signature if isinstance(signature, str) else ""))
    return found


def check_payload(payload: bytes, digest: str, name: str) -> tuple[Reason, str] | None:
    """None if the simple-signing ``payload`` names image ``digest`` in repository ``name``."""
    found = simple_signing_problem(payload, digest, name)
    return None if found is None else (Reason(found[0]), found[1])


def decode_signature(text: str) -> bytes | None:
    """The raw signature of a base64 annotation, or None if it is missing or not base64."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw or None


@dataclass(frozen=True)
class Verdict:
    """The outcome over every signature: the key (or keyless identity) that verified one, or
    why none passed."""

    key: PublicKey | None
    reason: Reason | None = None
    detail: str = ""
    identity: KeylessIdentity | None = None

    @property
    def fingerprint(self) -> str | None:
        """What the cache records: the key's fingerprint or the identity's ``keyless:...``."""
        if self.key is not None:
            return self.key.fingerprint
        return self.identity.fingerprint if self.identity is not None else None


def evaluate(
    signatures: list[tuple[bytes, str]], digest: str, name: str, keys: tuple[PublicKey, ...]
) -> Verdict:
    """Judge ``(payload, base64 signature)`` pairs: pass when one is signed by one of ``keys``
    and names ``digest`` and ``name``. The failure reported is the one closest to passing
    (a trusted signature over the wrong image beats no trusted signature at all)."""
    if not signatures:
        return Verdict(None, Reason.NO_SIGNATURE, "the signature manifest has no cosign payload")
    worst: tuple[int, Reason, str] = (0, Reason.MALFORMED, "no signature annotation is base64")
    for payload, text in signatures:
        raw = decode_signature(text)
        if raw is None:
            continue
        key = next((k for k in keys if k.verify(raw, payload)), None)
        if key is None:
            count = len(keys)
            detail = (
                f"no signature verifies with the {count} trusted key{'s' if count != 1 else ''}"
                f" ({', '.join(k.fingerprint[:16] for k in keys)})"
            )
            worst = max(worst, (1, Reason.WRONG_KEY, detail))
            continue
        problem = check_payload(payload, digest, name)
        if problem is None:
            return Verdict(key)
        worst = max(worst, (2, *problem))
    return Verdict(None, worst[1], worst[2])


# -- I/O --------------------------------------------------------------------------------------


async def verify(session: Any, digest: str, rule: Rule) -> tuple[str, ...]:
    """Check the cosign signatures of image ``digest`` through the registry ``session``.

    Returns the fingerprint of the key that verified; raises :class:`SignatureFailure`
    (or the session's fetch errors when the registry cannot be read).
    """
    ref: OciReference = session.ref
    try:
        verdict = await _verdict(session, digest, ref, rule)
    except SignatureFailure as error:
        SIGNATURE_VERIFICATIONS.inc(result=getattr(error, "reason", Reason.MALFORMED).value)
        raise
    except FetchError:
        SIGNATURE_VERIFICATIONS.inc(result="error")
        raise
    if verdict.fingerprint is None:
        assert verdict.reason is not None
        SIGNATURE_VERIFICATIONS.inc(result=verdict.reason.value)
        raise signature_failure(session.url, ref.name, verdict.reason, verdict.detail)
    SIGNATURE_VERIFICATIONS.inc(result="success")
    extra = {"repository": ref.name, "digest": digest, "rule": rule.origin}
    if verdict.identity is not None:
        extra["identity"] = verdict.identity.describe()
    log.info("verified a module signature", extra={**extra, "key": verdict.fingerprint})
    return (verdict.fingerprint,)


async def _verdict(session: Any, digest: str, ref: OciReference, rule: Rule) -> Verdict:
    tag = signature_tag(digest)
    body = await _signature_manifest(session, tag, ref)
    by_key = None
    if rule.keys:
        by_key = await _key_verdict(session, digest, ref, rule.keys, tag, body)
        if by_key.key is not None or not rule.keyless:
            return by_key
    # cosign v2's tag layout first; the referrers (cosign v3 bundles) only if that fails
    found = await tag_evidence(session, body, tag) if body is not None else []
    outcome = judge(found, digest, ref.name, rule.keyless)
    if not isinstance(outcome, KeylessIdentity):
        found += await referrer_evidence(session, digest)
        outcome = judge(found, digest, ref.name, rule.keyless)
    if isinstance(outcome, KeylessIdentity):
        return Verdict(None, identity=outcome)
    keyless = Verdict(None, Reason(outcome.problem.value), outcome.detail)
    if by_key is not None and keyless.reason is Reason.NO_SIGNATURE:
        return by_key  # only key-based signatures were there: say what was wrong with them
    return keyless


async def _key_verdict(
    session: Any,
    digest: str,
    ref: OciReference,
    keys: tuple[PublicKey, ...],
    tag: str,
    body: bytes | None,
) -> Verdict:
    if body is None:
        return Verdict(None, Reason.NO_SIGNATURE, f"no cosign signature at {ref.name}:{tag}")
    try:
        layers = parse_signature_manifest(body)
    except oci_layers.LayoutError as exc:
        raise signature_failure(session.url, ref.name, Reason.MALFORMED, str(exc)) from None
    if len(layers) > MAX_SIGNATURES:
        raise signature_failure(
            session.url, ref.name, Reason.MALFORMED, f"more than {MAX_SIGNATURES} signatures"
        )
    signatures = []
    for layer in layers:
        if decode_signature(layer.signature) is None:
            signatures.append((b"", layer.signature))  # counted as malformed, nothing to fetch
            continue
        if layer.descriptor.size > MAX_PAYLOAD:
            raise signature_failure(
                session.url,
                ref.name,
                Reason.MALFORMED,
                f"signature payload {layer.descriptor.digest} is over {MAX_PAYLOAD} bytes",
            )
        try:
            payload = await session.blob(layer.descriptor, None)
        except ChecksumMismatch as exc:
            raise signature_failure(session.url, ref.name, Reason.TAMPERED, exc.cause) from None
        signatures.append((payload, layer.signature))
    return evaluate(signatures, digest, ref.name, keys)


async def _signature_manifest(session: Any, tag: str, ref: OciReference) -> bytes | None:
    """The ``.sig`` manifest bytes (digest-checked against the registry's header), or None."""

    async def attempt() -> tuple[bytes, str] | None:
        accept = ", ".join(oci_layers.IMAGE_TYPES)
        async with session.get(f"manifests/{tag}", accept=accept) as resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                await session.fail(resp, "manifest", tag)
            body = await session.read_capped(resp, MAX_SIGNATURE_MANIFEST, "signature manifest")
            return body, resp.headers.get("docker-content-digest", "")

    answer = await session.retrying(attempt)
    if answer is None:
        return None
    body, header_digest = answer
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if header_digest.startswith("sha256:") and header_digest != actual:
        raise signature_failure(
            session.url,
            ref.name,
            Reason.TAMPERED,
            f"signature manifest bytes hash to {actual} but the registry says {header_digest}",
        )
    return body
