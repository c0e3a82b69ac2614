"""A test Sigstore: a Fulcio-like CA, a Rekor-like log, OIDC identities, made with ``cryptography``.

Artifacts are produced as cosign writes them:

* keyless ``cosign sign`` (cosign v2, tag layout): the simple-signing layer of a
  ``sha256-<hex>.sig`` manifest with the annotations ``dev.cosignproject.cosign/signature``,
  ``dev.sigstore.cosign/bundle`` (Rekor's SET over a ``hashedrekord`` entry),
  ``dev.sigstore.cosign/certificate`` and ``dev.sigstore.cosign/chain`` (PEM);
* cosign v3 ``cosign sign`` (new bundle format): a Sigstore bundle v0.3 with a DSSE envelope
  over an in-toto statement (predicate ``https://sigstore.dev/cosign/sign/v1``), a ``dsse``
  Rekor entry with SET and inclusion proof + signed checkpoint, pushed as an OCI 1.1 referrer
  (subject = the module's manifest) plus the referrers tag schema index ``sha256-<hex>``
  (what go-containerregistry writes when the registry has no referrers API).

``trusted_root_json`` writes the trusted root in sigstore/protobuf-specs' JSON form.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.cosign import SIGNATURE_ANNOTATION, SIMPLE_SIGNING, go_json, signature_config
from tests.support.oci_push import OCI_INDEX, OCI_MANIFEST, Pushed, RawPusher, digest_of

ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
GITHUB = "https://token.actions.githubusercontent.com"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utf8string(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


# -- Fulcio -----------------------------------------------------------------------------------


class FulcioCA:
    """A root and an intermediate (as Fulcio's) that issue short-lived code-signing certs."""

    def __init__(self, name: str = "sigstore", start: datetime | None = None) -> None:
        now = start or datetime.now(UTC) - timedelta(days=30)
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.key = ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sigstore.dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        inter = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sigstore.dev"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-intermediate"),
            ]
        )
        self.root = self._ca(subject, subject, self.root_key, self.root_key, now, None)
        self.intermediate = self._ca(inter, subject, self.key, self.root_key, now, 0)
        self.start = now

    @staticmethod
    def _ca(
        subject: x509.Name,
        issuer: x509.Name,
        key: Any,
        signer: Any,
        now: datetime,
        path: int | None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if signer is not key:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        return builder.sign(signer, hashes.SHA384())

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuing certificate first, root last (trusted_root.json's order)."""
        return [self.intermediate, self.root]

    def issue(
        self,
        identity: str,
        issuer: str = GITHUB,
        *,
        not_before: datetime | None = None,
        minutes: int = 10,
        issuer_oid: str = "both",
        code_signing: bool = True,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """An ephemeral P-256 key and its certificate for ``identity`` (email or URI SAN)."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.now(UTC) - timedelta(minutes=1)
        name: x509.GeneralName = (
            x509.UniformResourceIdentifier(identity)
            if "://" in identity
            else x509.RFC822Name(identity)
        )
        issuer_exts = []  # Fulcio writes both: the v2 DER string and the deprecated raw bytes
        if issuer_oid in ("both", "v2"):
            issuer_exts.append(x509.UnrecognizedExtension(ISSUER_V2, _utf8string(issuer)))
        if issuer_oid in ("both", "v1"):
            issuer_exts.append(x509.UnrecognizedExtension(ISSUER_V1, issuer.encode()))
        usages = [
            ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.SERVER_AUTH
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(minutes=minutes))
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .add_extension(x509.SubjectAlternativeName([name]), critical=True)
        )
        for ext in issuer_exts:
            builder = builder.add_extension(ext, critical=False)
        return key, builder.sign(self.key, hashes.SHA384())


# -- Rekor ------------------------------------------------------------------------------------


def _leaf_hash(body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + body).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree_hash(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH over leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return _node(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


def audit_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if index < k:
        return [*audit_path(index, leaves[:k]), tree_hash(leaves[k:])]
    return [*audit_path(index - k, leaves[k:]), tree_hash(leaves[:k])]


@dataclass
class Entry:
    """A logged entry: what cosign puts next to a signature."""

    body: bytes
    integrated_time: int
    log_index: int
    log_id: bytes
    set: bytes
    proof: dict[str, Any] | None = None


@dataclass
class RekorLog:
    """A log with an ECDSA P-256 key; entries get a SET, and an inclusion proof on request."""

    origin: str = "rekor.test - 1193050959916656506"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    leaves: list[bytes] = field(default_factory=list)

    @property
    def log_id(self) -> bytes:
        return hashlib.sha256(_spki(self.key.public_key())).digest()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def add(self, body: bytes, integrated_time: int | None = None, proof: bool = True) -> Entry:
        # a few other entries first, so the proof has a real path
        for i in range(3):
            self.leaves.append(_leaf_hash(b"filler %d %d" % (len(self.leaves), i)))
        index = len(self.leaves)
        self.leaves.append(_leaf_hash(body))
        self.leaves.append(_leaf_hash(b"after %d" % index))
        when = int(time.time()) if integrated_time is None else integrated_time
        doc = {
            "body": _b64(body),
            "integratedTime": when,
            "logID": self.log_id.hex(),
            "logIndex": index,
        }
        set_ = self.sign(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        entry = Entry(body, when, index, self.log_id, set_)
        if proof:
            entry.proof = self.proof(index)
        return entry

    def proof(self, index: int) -> dict[str, Any]:
        size = len(self.leaves)
        root = tree_hash(self.leaves)
        text = f"{self.origin}\n{size}\n{_b64(root)}\n"
        hint = self.log_id[:4]
        note = (
            f"{text}\n\u2014 {self.origin.split(' ')[0]} {_b64(hint + self.sign(text.encode()))}\n"
        )
        return {
            "logIndex": str(index),
            "rootHash": _b64(root),
            "treeSize": str(size),
            "hashes": [_b64(h) for h in audit_path(index, self.leaves)],
            "checkpoint": {"envelope": note},
        }


def trusted_root_json(
    cas: list[FulcioCA],
    logs: list[RekorLog],
    *,
    ca_end: datetime | None = None,
    log_start: datetime | None = None,
) -> bytes:
    """A ``trusted_root.json`` (media type v0.1) naming ``cas`` and ``logs``."""
    doc: dict[str, Any] = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [
            {
                "baseUrl": "https://rekor.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": _b64(_spki(log.key.public_key())),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": _rfc3339(log_start or datetime(2021, 1, 12, tzinfo=UTC))},
                },
                "logId": {"keyId": _b64(log.log_id)},
            }
            for log in logs
        ],
        "certificateAuthorities": [
            {
                "subject": {"organization": "sigstore.dev", "commonName": "sigstore"},
                "uri": "https://fulcio.test",
                "certChain": {"certificates": [{"rawBytes": _b64(_der(c))} for c in ca.chain]},
                "validFor": {"start": _rfc3339(ca.start)}
                | ({"end": _rfc3339(ca_end)} if ca_end else {}),
            }
            for ca in cas
        ],
        "ctlogs": [],
        "timestampAuthorities": [],
    }
    return json.dumps(doc, indent=2).encode()


# -- signing ----------------------------------------------------------------------------------


@dataclass
class KeylessSigner:
    """An OIDC identity with a certificate from ``ca``; ``log`` logs its signatures."""

    ca: FulcioCA
    log: RekorLog
    identity: str
    issuer: str = GITHUB
    cert_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key, self.cert = self.ca.issue(self.identity, self.issuer, **self.cert_options)

    def raw_sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def hashedrekord_body(payload: bytes, signature: bytes, cert: x509.Certificate) -> bytes:
    """The canonical ``hashedrekord`` v0.0.1 body Rekor logs for a cosign signature."""
    doc = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
            "signature": {"content": _b64(signature), "publicKey": {"content": _b64(_pem(cert))}},
        },
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def dsse_body(envelope: bytes, payload: bytes, signature: bytes, cert: x509.Certificate) -> bytes:
    """The canonical ``dsse`` v0.0.1 body Rekor logs for a DSSE envelope."""
    doc = {
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(envelope).hexdigest()},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [{"signature": _b64(signature), "verifier": _b64(_pem(cert))}],
        },
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def rekor_bundle_annotation(entry: Entry) -> str:
    """cosign's ``dev.sigstore.cosign/bundle`` (``bundle.RekorBundle`` marshalled by Go)."""
    doc = {
        "SignedEntryTimestamp": _b64(entry.set),
        "Payload": {
            "body": _b64(entry.body),
            "integratedTime": entry.integrated_time,
            "logIndex": entry.log_index,
            "logID": entry.log_id.hex(),
        },
    }
    return go_json(doc).decode()


@dataclass
class TagSignature:
    """One keyless simple-signing layer: payload and its annotations."""

    payload: bytes
    annotations: dict[str, str]


def tag_signature(
    signer: KeylessSigner,
    payload: bytes,
    *,
    log: bool = True,
    chain: bool = True,
    integrated_time: int | None = None,
    signature: bytes | None = None,
) -> TagSignature:
    """What keyless ``cosign sign`` (v2) attaches for ``payload``."""
    raw = signature if signature is not None else signer.raw_sign(payload)
    annotations = {SIGNATURE_ANNOTATION: _b64(raw)}
    if log:
        entry = signer.log.add(hashedrekord_body(payload, raw, signer.cert), integrated_time)
        annotations["dev.sigstore.cosign/bundle"] = rekor_bundle_annotation(entry)
    annotations["dev.sigstore.cosign/certificate"] = _pem(signer.cert).decode()
    if chain:
        annotations["dev.sigstore.cosign/chain"] = b"".join(
            _pem(c) for c in signer.ca.chain
        ).decode()
    return TagSignature(payload, dict(sorted(annotations.items())))


def push_tag_signatures(
    pusher: RawPusher, repo: str, digest: str, layers: list[TagSignature]
) -> Pushed:
    """Push the ``sha256-<hex>.sig`` image holding ``layers``."""
    config = signature_config([s.payload for s in layers])
    blobs = {pusher.push_blob(repo, config): config}
    for sig in layers:
        blobs[pusher.push_blob(repo, sig.payload)] = sig.payload
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": len(config),
            "digest": digest_of(config),
        },
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                "size": len(s.payload),
                "digest": digest_of(s.payload),
                "annotations": s.annotations,
            }
            for s in layers
        ],
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    tag = digest.replace(":", "-", 1) + ".sig"
    return Pushed(repo, tag, pusher.push_manifest(repo, tag, body, OCI_MANIFEST), body, blobs)


def sign_statement(name: str, digest: str) -> bytes:
    """cosign v3's signature statement for image ``name@digest``."""
    doc = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": COSIGN_SIGN_PREDICATE,
        "predicate": {},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sigstore_bundle(
    signer: KeylessSigner,
    statement: bytes,
    *,
    log: bool = True,
    proof: bool = True,
    tamper_proof: bool = False,
) -> bytes:
    """A v0.3 bundle: DSSE envelope over ``statement``, certificate, Rekor ``dsse`` entry."""
    payload_type = "application/vnd.in-toto+json"
    raw = signer.raw_sign(pae(payload_type, statement))
    envelope = {
        "payload": _b64(statement),
        "payloadType": payload_type,
        "signatures": [{"sig": _b64(raw)}],
    }
    material: dict[str, Any] = {"certificate": {"rawBytes": _b64(_der(signer.cert))}}
    if log:
        body = dsse_body(json.dumps(envelope).encode(), statement, raw, signer.cert)
        entry = signer.log.add(body, proof=proof)
        tlog: dict[str, Any] = {
            "logIndex": str(entry.log_index),
            "logId": {"keyId": _b64(entry.log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(entry.integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": _b64(entry.set)},
            "canonicalizedBody": _b64(entry.body),
        }
        if entry.proof is not None:
            if tamper_proof:
                hashes_ = entry.proof["hashes"]
                hashes_[0] = _b64(hashlib.sha256(b"forged").digest())
            tlog["inclusionProof"] = entry.proof
        material["tlogEntries"] = [tlog]
    doc = {"mediaType": BUNDLE_V03, "verificationMaterial": material, "dsseEnvelope": envelope}
    return json.dumps(doc).encode()


def push_referrer(
    pusher: RawPusher, repo: str, subject: Pushed, bundle: bytes, *, index: bool = True
) -> str:
    """Push ``bundle`` as an OCI 1.1 referrer of ``subject`` (cosign's
    ``WriteAttestationNewBundleFormat``) and, with ``index``, add it to the referrers tag
    schema index ``sha256-<hex>``; returns the referrer manifest digest."""
    empty = b"{}"
    pusher.push_blob(repo, empty)
    pusher.push_blob(repo, bundle)
    annotations = {
        "dev.sigstore.bundle.content": "dsse-envelope",
        "dev.sigstore.bundle.predicateType": COSIGN_SIGN_PREDICATE,
        "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
    }
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03,
        "config": {"mediaType": EMPTY_CONFIG, "size": 2, "digest": digest_of(empty)},
        "layers": [{"mediaType": BUNDLE_V03, "size": len(bundle), "digest": digest_of(bundle)}],
        "subject": {
            "mediaType": OCI_MANIFEST,
            "size": len(subject.manifest),
            "digest": subject.digest,
        },
        "annotations": annotations,
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    digest = pusher.push_manifest(repo, digest_of(body), body, OCI_MANIFEST)
    if index:
        tag = subject.digest.replace(":", "-", 1)
        existing = pusher.request(
            repo, "GET", f"/v2/{repo}/manifests/{tag}", headers={"accept": OCI_INDEX}
        )
        manifests = existing.json()["manifests"] if existing.status_code == 200 else []
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "size": len(body),
                "digest": digest,
                "artifactType": BUNDLE_V03,
                "annotations": annotations,
            }
        )
        index_doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        pusher.push_manifest(
            repo, tag, json.dumps(index_doc, separators=(",", ":")).encode(), OCI_INDEX
        )
    return digest


def keyless_policy_yaml(
    rules: list[tuple[str, list[dict[str, str]] | None]], trusted_root: str | None = None
) -> str:
    """A verify policy with keyless entries: (repository glob, entries or None for ``none``);
    each entry maps policy keys (``identity``, ``issuerRegExp``, ...) to values."""
    lines = [f"trustedRoot: {json.dumps(trusted_root)}"] if trusted_root else []
    lines.append("rules:")
    for pattern, entries in rules:
        lines.append(f"  - repository: {json.dumps(pattern)}")
        if entries is None:
            lines.append("    keys: none")
            continue
        lines.append("    keyless:")
        for item in entries:
            for i, (key, value) in enumerate(item.items()):
                lines.append(f"      {'- ' if i == 0 else '  '}{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
