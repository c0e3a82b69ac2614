"""Read keyless signature evidence: cosign's tag layout annotations and Sigstore bundles.

Both become :class:`Evidence`: the Fulcio certificate (and any chain it came with), the
signature, the exact bytes it signs, the signed payload, and the Rekor log entry (canonical
body, integrated time, index, log id, signed entry timestamp, inclusion proof). Pure: parsing
only, nothing is trusted here (:mod:`keyless` verifies).

* cosign's tag layout (``sha256-<hex>.sig``): a simple-signing layer whose annotations hold
  ``dev.cosignproject.cosign/signature`` (base64), ``dev.sigstore.cosign/certificate`` and
  ``dev.sigstore.cosign/chain`` (PEM), ``dev.sigstore.cosign/bundle`` (JSON
  ``{"SignedEntryTimestamp": b64, "Payload": {"body": b64, "integratedTime": n,
  "logIndex": n, "logID": hex}}``).
* a Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``, also v0.1/v0.2),
  protobuf JSON, with a DSSE envelope (cosign v3 ``cosign sign`` writes an in-toto statement
  with predicate type ``https://sigstore.dev/cosign/sign/v1``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from wasm_agent.fetch.reference import InvalidReference, parse_reference

CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_TYPES = frozenset(
    {
        BUNDLE_V03,
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
INTOTO_TYPE = "application/vnd.in-toto+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
COSIGN_TYPE = "cosign container image signature"
INTOTO_STATEMENTS = frozenset(
    {"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}
)
MAX_BUNDLE = 1024 * 1024


class EvidenceError(ValueError):
    """The evidence cannot be read (reported as a malformed signature)."""


@dataclass(frozen=True)
class InclusionProof:
    """An RFC 6962 inclusion proof and the signed checkpoint (a signed note) it ends in."""

    log_index: int
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str


@dataclass(frozen=True)
class LogEntry:
    """A Rekor v1 entry as carried with a signature."""

    body: bytes  # the canonicalized entry body (JSON)
    integrated_time: int
    log_index: int
    log_id: bytes
    signed_entry_timestamp: bytes | None
    proof: InclusionProof | None


@dataclass(frozen=True)
class Evidence:
    """One keyless signature, as found; ``where`` says where (for messages)."""

    where: str
    certificate: bytes | None  # DER
    chain: tuple[bytes, ...]  # DER, untrusted (trust comes from the trusted root)
    signature: bytes
    signed: bytes  # the bytes the signature covers (payload, or DSSE PAE)
    payload: bytes
    payload_type: str
    entry: LogEntry | None = field(default=None)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceError(f"{what} is missing")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError(f"{what} is not base64") from None


def _int(value: Any, what: str) -> int:
    """A protobuf JSON int64 (a string) or a JSON number."""
    if isinstance(value, bool):
        raise EvidenceError(f"{what} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise EvidenceError(f"{what} is not an integer")


def _json(data: bytes | str, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EvidenceError(f"{what} is not JSON") from None


def pem_certificates(text: str, what: str) -> tuple[bytes, ...]:
    """The DER certificates of a PEM text."""
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise EvidenceError(f"{what} is not a PEM certificate") from None
    return tuple(c.public_bytes(Encoding.DER) for c in certs)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


# -- cosign's tag layout ----------------------------------------------------------------------


def from_cosign_layer(
    payload: bytes, signature: bytes, annotations: dict[str, Any], where: str
) -> Evidence:
    """Evidence of one simple-signing layer of a ``.sig`` manifest."""
    cert_pem = annotations.get(CERTIFICATE_ANNOTATION)
    certificate = None
    if isinstance(cert_pem, str) and cert_pem.strip():
        certificate = pem_certificates(cert_pem, "the certificate annotation")[0]
    chain_pem = annotations.get(CHAIN_ANNOTATION)
    chain: tuple[bytes, ...] = ()
    if isinstance(chain_pem, str) and chain_pem.strip():
        chain = pem_certificates(chain_pem, "the chain annotation")
    entry = None
    bundle = annotations.get(BUNDLE_ANNOTATION)
    if isinstance(bundle, str) and bundle.strip():
        entry = _rekor_bundle(bundle)
    return Evidence(where, certificate, chain, signature, payload, payload, SIMPLE_SIGNING, entry)


def _rekor_bundle(text: str) -> LogEntry:
    doc = _json(text, "the bundle annotation")
    body = doc.get("Payload") if isinstance(doc, dict) else None
    if not isinstance(body, dict):
        raise EvidenceError("the bundle annotation has no Payload")
    try:
        log_id = bytes.fromhex(str(body.get("logID", "")))
    except ValueError:
        raise EvidenceError("the bundle annotation's logID is not hex") from None
    return LogEntry(
        body=_b64(body.get("body"), "the bundle annotation's body"),
        integrated_time=_int(body.get("integratedTime"), "the bundle's integratedTime"),
        log_index=_int(body.get("logIndex"), "the bundle's logIndex"),
        log_id=log_id,
        signed_entry_timestamp=_b64(doc.get("SignedEntryTimestamp"), "the bundle's SET"),
        proof=None,
    )


# -- Sigstore bundles -------------------------------------------------------------------------


def from_bundle(data: bytes, where: str) -> Evidence:
    """Evidence of a Sigstore bundle (protobuf JSON) with a DSSE envelope."""
    doc = _json(data, "the Sigstore bundle")
    if not isinstance(doc, dict):
        raise EvidenceError("the Sigstore bundle is not a JSON object")
    media_type = doc.get("mediaType")
    if media_type not in BUNDLE_TYPES:
        raise EvidenceError(f"bundle media type {media_type!r} is not a Sigstore bundle")
    material = doc.get("verificationMaterial")
    if not isinstance(material, dict):
        raise EvidenceError("the bundle has no verificationMaterial")
    certificate, chain = _bundle_certificates(material)
    envelope = doc.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        kind = "messageSignature" if "messageSignature" in doc else "no content"
        raise EvidenceError(f"the bundle has {kind}, not a DSSE envelope over a statement")
    payload = _b64(envelope.get("payload"), "the DSSE payload")
    payload_type = envelope.get("payloadType")
    if not isinstance(payload_type, str):
        raise EvidenceError("the DSSE envelope has no payloadType")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise EvidenceError("the DSSE envelope must have exactly one signature")
    signature = _b64(signatures[0].get("sig") if isinstance(signatures[0], dict) else None, "sig")
    entries = material.get("tlogEntries") or []
    if not isinstance(entries, list):
        raise EvidenceError("tlogEntries is not a list")
    entry = _tlog_entry(entries[0]) if entries else None
    return Evidence(
        where,
        certificate,
        chain,
        signature,
        pae(payload_type, payload),
        payload,
        payload_type,
        entry,
    )


def _bundle_certificates(material: dict[str, Any]) -> tuple[bytes | None, tuple[bytes, ...]]:
    cert = material.get("certificate")
    if isinstance(cert, dict):
        return _b64(cert.get("rawBytes"), "the bundle certificate"), ()
    chain = material.get("x509CertificateChain")
    certs = chain.get("certificates") if isinstance(chain, dict) else None
    if isinstance(certs, list) and certs:
        ders = tuple(
            _b64(c.get("rawBytes") if isinstance(c, dict) else None, "a chain certificate")
            for c in certs
        )
        return ders[0], ders[1:]
    return None, ()


def _tlog_entry(raw: Any) -> LogEntry:
    if not isinstance(raw, dict):
        raise EvidenceError("a tlogEntries item is not an object")
    log_id = raw.get("logId")
    promise = raw.get("inclusionPromise")
    set_ = None
    if isinstance(promise, dict) and promise.get("signedEntryTimestamp"):
        set_ = _b64(promise.get("signedEntryTimestamp"), "signedEntryTimestamp")
    proof = raw.get("inclusionProof")
    return LogEntry(
        body=_b64(raw.get("canonicalizedBody"), "canonicalizedBody"),
        integrated_time=_int(raw.get("integratedTime", 0), "integratedTime"),
        log_index=_int(raw.get("logIndex"), "logIndex"),
        log_id=_b64(log_id.get("keyId") if isinstance(log_id, dict) else None, "logId.keyId"),
        signed_entry_timestamp=set_,
        proof=_proof(proof) if isinstance(proof, dict) else None,
    )


def _proof(raw: dict[str, Any]) -> InclusionProof:
    checkpoint = raw.get("checkpoint")
    envelope = checkpoint.get("envelope") if isinstance(checkpoint, dict) else None
    hashes = raw.get("hashes") or []
    if not isinstance(hashes, list):
        raise EvidenceError("inclusionProof.hashes is not a list")
    return InclusionProof(
        log_index=_int(raw.get("logIndex"), "inclusionProof.logIndex"),
        tree_size=_int(raw.get("treeSize"), "inclusionProof.treeSize"),
        root_hash=_b64(raw.get("rootHash"), "inclusionProof.rootHash"),
        hashes=tuple(_b64(h, "an inclusionProof hash") for h in hashes),
        checkpoint=envelope if isinstance(envelope, str) else "",
    )


# -- what the payload names -------------------------------------------------------------------


def statement_problem(payload: bytes, digest: str) -> tuple[str, str] | None:
    """None if an in-toto statement is cosign's signature statement over image ``digest``;
    else ``(reason value, detail)`` with reason ``malformed`` or ``digest_mismatch``."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "malformed", "the signed statement is not JSON"
    if not isinstance(doc, dict) or doc.get("_type") not in INTOTO_STATEMENTS:
        return "malformed", "the signed payload is not an in-toto statement"
    if doc.get("predicateType") != COSIGN_SIGN_PREDICATE:
        return (
            "malformed",
            f"the statement's predicateType is {doc.get('predicateType')!r}, "
            f"not a cosign signature ({COSIGN_SIGN_PREDICATE})",
        )
    algorithm, _, hexdigest = digest.partition(":")
    named = []
    for subject in doc.get("subject") or []:
        value = subject.get("digest", {}).get(algorithm) if isinstance(subject, dict) else None
        if isinstance(value, str):
            if value.lower() == hexdigest:
                return None
            named.append(f"{algorithm}:{value}")
    return (
        "digest_mismatch",
        f"the signed statement names {', '.join(named) or 'no sha256 subject'}, "
        f"the module's manifest is {digest}",
    )


def _field(doc: Any, name: str) -> Any:
    """``doc[name]``, matched case-insensitively when not exact (as Go's json.Unmarshal)."""
    if not isinstance(doc, dict):
        return None
    if name in doc:
        return doc[name]
    for key, value in doc.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return None


def simple_signing_problem(payload: bytes, digest: str, name: str) -> tuple[str, str] | None:
    """None if a cosign simple-signing ``payload`` names image ``digest`` in repository
    ``name``; else ``(reason value, detail)``: ``malformed``, ``digest_mismatch``, or
    ``identity_mismatch`` (the payload's docker-reference names another repository)."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "malformed", "the signed payload is not JSON"
    critical = _field(doc, "critical")
    kind = _field(critical, "type")
    if kind != COSIGN_TYPE:
        return "malformed", f"the signed payload has type {kind!r}, not {COSIGN_TYPE!r}"
    signed_digest = _field(_field(critical, "image"), "docker-manifest-digest")
    if signed_digest != digest:
        return (
            "digest_mismatch",
            f"the signed payload names image {signed_digest!r}, the module's manifest is {digest}",
        )
    reference = _field(_field(critical, "identity"), "docker-reference")
    try:
        signed_name = parse_reference(reference).name if isinstance(reference, str) else None
    except InvalidReference:
        signed_name = None
    if signed_name != name:
        return (
            "identity_mismatch",
            f"the signed payload names repository {reference!r}, the module is in {name}",
        )
    return None
