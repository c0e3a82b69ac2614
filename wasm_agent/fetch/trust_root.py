"""Read a Sigstore ``trusted_root.json`` (the offline root of trust for keyless signatures).

The format is sigstore/protobuf-specs' ``TrustedRoot`` message in protobuf JSON, media type
``application/vnd.dev.sigstore.trustedroot+json;version=0.1`` (or ``0.2``)::

    {"mediaType": "...",
     "tlogs": [{"baseUrl": "...", "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": "<base64 DER SubjectPublicKeyInfo>",
                              "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                              "validFor": {"start": "<RFC 3339>", "end": "<RFC 3339>"}},
                "logId": {"keyId": "<base64 sha256 of the DER key>"}}],
     "certificateAuthorities": [{"subject": {...}, "uri": "...",
                                 "certChain": {"certificates": [{"rawBytes": "<base64 DER>"}]},
                                 "validFor": {"start": "...", "end": "..."}}],
     "ctlogs": [...], "timestampAuthorities": [...]}

Fulcio CA chains (intermediates first, root last) and Rekor log keys are used; CT logs and
timestamp authorities are read past (signed certificate timestamps and RFC 3161 timestamps are
not checked, see ``docs/signing.md``). Pure: no network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_der_public_key

from wasm_agent.fetch.sigstore_bundle import LogEntry

MEDIA_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "application/vnd.dev.sigstore.trustedroot.v0.1+json",
        "application/vnd.dev.sigstore.trustedroot+json;version=0.2",
        "application/vnd.dev.sigstore.trustedroot.v0.2+json",
    }
)
MAX_TRUST_ROOT_SIZE = 4 * 1024 * 1024


class TrustRootError(ValueError):
    """The trusted root cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Window:
    """A validity window; ``end`` None is open-ended."""

    start: datetime
    end: datetime | None

    def contains(self, when: datetime) -> bool:
        return self.start <= when and (self.end is None or when <= self.end)


@dataclass(frozen=True)
class CertificateAuthority:
    """A Fulcio CA: DER certificates, issuing certificate first, root last."""

    uri: str
    certificates: tuple[Any, ...] = field(repr=False)  # cryptography x509.Certificate
    valid: Window = field(repr=False)


@dataclass(frozen=True)
class TransparencyLog:
    """A Rekor log: its public key, ``log_id`` (sha256 of the DER key) and validity."""

    base_url: str
    log_id: bytes
    key: Any = field(repr=False)  # a cryptography public key
    valid: Window = field(repr=False)


@dataclass(frozen=True)
class TrustRoot:
    """The parsed root; ``fingerprint`` is the sha256 hex of the file's bytes."""

    source: str
    fingerprint: str
    authorities: tuple[CertificateAuthority, ...]
    logs: tuple[TransparencyLog, ...]

    def log(self, log_id: bytes) -> TransparencyLog | None:
        """The log whose key id is ``log_id``, else None."""
        return next((t for t in self.logs if t.log_id == log_id), None)


def load_trust_root(path: str | Path) -> TrustRoot:
    """Read and validate a ``trusted_root.json``; raises :class:`TrustRootError`."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_TRUST_ROOT_SIZE:
            raise TrustRootError(f"{path}: larger than {MAX_TRUST_ROOT_SIZE} bytes")
        data = path.read_bytes()
    except OSError as error:
        raise TrustRootError(f"{path}: cannot read: {error.strerror}") from None
    return parse_trust_root(data, str(path))


def parse_trust_root(data: bytes, source: str = "<trusted root>") -> TrustRoot:
    """Validate the bytes of a ``trusted_root.json``."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TrustRootError(f"{source}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise TrustRootError(f"{source}: not a JSON object")
    media_type = doc.get("mediaType")
    if media_type not in MEDIA_TYPES:
        raise TrustRootError(f"{source}: mediaType {media_type!r} is not a Sigstore trusted root")
    authorities = tuple(
        _authority(source, i, raw)
        for i, raw in enumerate(_list(source, doc, "certificateAuthorities"))
    )
    logs = tuple(_log(source, i, raw) for i, raw in enumerate(_list(source, doc, "tlogs")))
    if not authorities:
        raise TrustRootError(f"{source}: no certificateAuthorities (Fulcio CA chains)")
    if not logs:
        raise TrustRootError(f"{source}: no tlogs (Rekor log keys)")
    return TrustRoot(source, hashlib.sha256(data).hexdigest(), authorities, logs)


def _list(source: str, doc: dict[str, Any], name: str) -> list[Any]:
    value = doc.get(name, [])
    if not isinstance(value, list):
        raise TrustRootError(f"{source}: {name} must be a list")
    return value


def _b64(source: str, where: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise TrustRootError(f"{source}: {where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TrustRootError(f"{source}: {where} is not base64") from None


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as protobuf JSON writes it (``Z`` or an offset), else None."""
    if not isinstance(value, str):
        return None
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # fromisoformat takes at most 6 fractional digits in 3.11
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _window(source: str, where: str, raw: Any) -> Window:
    if not isinstance(raw, dict) or "start" not in raw:
        raise TrustRootError(f"{source}: {where}.validFor.start is missing")
    start = parse_time(raw.get("start"))
    end = parse_time(raw["end"]) if raw.get("end") is not None else None
    if start is None or (raw.get("end") is not None and end is None):
        raise TrustRootError(f"{source}: {where}.validFor is not RFC 3339 time")
    return Window(start, end)


def _authority(source: str, index: int, raw: Any) -> CertificateAuthority:
    where = f"certificateAuthorities[{index}]"
    if not isinstance(raw, dict):
        raise TrustRootError(f"{source}: {where} must be an object")
    chain = raw.get("certChain")
    certs = chain.get("certificates") if isinstance(chain, dict) else None
    if not isinstance(certs, list) or not certs:
        raise TrustRootError(f"{source}: {where}.certChain.certificates is empty")
    parsed = []
    for j, cert in enumerate(certs):
        at = f"{where}.certChain.certificates[{j}].rawBytes"
        der = _b64(source, at, cert.get("rawBytes") if isinstance(cert, dict) else None)
        try:
            parsed.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise TrustRootError(f"{source}: {at} is not a DER certificate") from None
    uri = raw.get("uri") if isinstance(raw.get("uri"), str) else ""
    return CertificateAuthority(
        str(uri), tuple(parsed), _window(source, where, raw.get("validFor"))
    )


def _log(source: str, index: int, raw: Any) -> TransparencyLog:
    where = f"tlogs[{index}]"
    if not isinstance(raw, dict):
        raise TrustRootError(f"{source}: {where} must be an object")
    key_doc = raw.get("publicKey")
    if not isinstance(key_doc, dict):
        raise TrustRootError(f"{source}: {where}.publicKey is missing")
    der = _b64(source, f"{where}.publicKey.rawBytes", key_doc.get("rawBytes"))
    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError):
        raise TrustRootError(f"{source}: {where}.publicKey.rawBytes is not a public key") from None
    except Exception:  # UnsupportedAlgorithm
        raise TrustRootError(f"{source}: {where}.publicKey has an unsupported type") from None
    log_id_doc = raw.get("logId")
    log_id = (
        _b64(source, f"{where}.logId.keyId", log_id_doc.get("keyId"))
        if isinstance(log_id_doc, dict)
        else hashlib.sha256(der).digest()
    )
    base_url = raw.get("baseUrl") if isinstance(raw.get("baseUrl"), str) else ""
    valid = _window(source, f"{where}.publicKey", key_doc.get("validFor"))
    return TransparencyLog(str(base_url), log_id, key, valid)


# -- signatures by the trusted keys ------------------------------------------------------------


def verify_signature(key: Any, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` over ``data`` verifies with ``key`` (ECDSA/SHA-2 or Ed25519)."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def set_payload(entry: LogEntry) -> bytes:
    """The canonical JSON that a Rekor v1 signed entry timestamp signs."""
    doc = {
        "body": base64.b64encode(entry.body).decode(),
        "integratedTime": entry.integrated_time,
        "logID": entry.log_id.hex(),
        "logIndex": entry.log_index,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def merkle_root(index: int, size: int, leaf: bytes, proof: tuple[bytes, ...]) -> bytes:
    """The RFC 6962 / RFC 9162 root an inclusion proof yields; ValueError if it is malformed."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    if len(proof) != inner + border:
        raise ValueError(
            f"the proof has {len(proof)} hashes, a tree of size {size} needs {inner + border}"
        )
    node = hashlib.sha256(b"\x00" + leaf).digest()
    for i, sibling in enumerate(proof[:inner]):
        pair = (node, sibling) if (index >> i) & 1 == 0 else (sibling, node)
        node = hashlib.sha256(b"\x01" + pair[0] + pair[1]).digest()
    for sibling in proof[inner:]:
        node = hashlib.sha256(b"\x01" + sibling + node).digest()
    return node


def verify_checkpoint(note: str, key: Any, size: int, root_hash: bytes) -> str | None:
    """None if the signed note ``note`` is signed by ``key`` and commits to ``size`` and
    ``root_hash``; else what is wrong."""
    text, sep, signatures = note.partition("\n\n")
    if not sep:
        return "the checkpoint is not a signed note"
    lines = text.split("\n")
    if len(lines) < 3:
        return "the checkpoint has no origin, size and root lines"
    if lines[1] != str(size) or lines[2] != base64.b64encode(root_hash).decode():
        return "the checkpoint names another tree size or root than the inclusion proof"
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            continue
        try:
            raw = base64.b64decode(line.rsplit(" ", 1)[-1], validate=True)
        except ValueError:
            continue
        if len(raw) > 4 and verify_signature(key, raw[4:], (text + "\n").encode()):
            return None
    return "no checkpoint signature verifies with the log key"
