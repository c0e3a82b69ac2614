"""Produce cosign signatures byte for byte as ``cosign sign --key K --tlog-upload=false`` does.

* the payload is sigstore's ``payload.Cosign`` marshalled by Go's ``encoding/json`` (compact,
  struct field order, ``optional`` map keys sorted, ``null`` when there are no annotations);
* the signature is ECDSA P-256 over SHA-256 in ASN.1 DER (or Ed25519 over the bytes),
  base64 in the layer annotation ``dev.cosignproject.cosign/signature``;
* the signature image is what go-containerregistry writes for cosign: an OCI manifest (compact
  JSON, fields in ``v1.Manifest`` order) with config ``application/vnd.oci.image.config.v1+json``
  (zero timestamps, the payloads as ``rootfs.diff_ids``), tagged ``sha256-<hex>.sig``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.support.oci_push import OCI_CONFIG, OCI_MANIFEST, Pushed, RawPusher, digest_of

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"


def go_json(value: Any) -> bytes:
    """``encoding/json.Marshal`` for the plain values cosign marshals (maps sorted, compact,
    ``<``, ``>``, ``&`` escaped as Go does)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.encode()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def simple_signing_payload(
    docker_reference: str, digest: str, optional: dict[str, Any] | None = None
) -> bytes:
    """The exact payload bytes ``cosign sign`` signs for ``docker_reference@digest``."""
    doc = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_TYPE,
        },
        "optional": _sorted(optional) if optional is not None else None,
    }
    return go_json(doc)


@dataclass
class Signer:
    """A key pair; ``sign`` gives the base64 signature cosign would put in the annotation."""

    private: Any
    algorithm: str

    @classmethod
    def ecdsa(cls) -> Signer:
        return cls(ec.generate_private_key(ec.SECP256R1()), "ecdsa-p256")

    @classmethod
    def ed25519(cls) -> Signer:
        return cls(ed25519.Ed25519PrivateKey.generate(), "ed25519")

    @property
    def public_pem(self) -> str:
        """``cosign.pub``: a PKIX ``PUBLIC KEY`` PEM block."""
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def raw_signature(self, payload: bytes) -> bytes:
        if self.algorithm == "ed25519":
            return self.private.sign(payload)
        return self.private.sign(payload, ec.ECDSA(hashes.SHA256()))

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self.raw_signature(payload)).decode()


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-", 1) + ".sig"


def signature_config(payloads: list[bytes]) -> bytes:
    """The config blob go-containerregistry writes for cosign's signature image."""
    diff_ids = ",".join(f'"{digest_of(p)}"' for p in payloads)
    return (
        '{"architecture":"","created":"0001-01-01T00:00:00Z",'
        '"history":[{"created":"0001-01-01T00:00:00Z"}],"os":"",'
        f'"rootfs":{{"type":"layers","diff_ids":[{diff_ids}]}},"config":{{}}}}'
    ).encode()


def signature_manifest(config: bytes, layers: list[tuple[bytes, str]]) -> bytes:
    """The OCI manifest of a signature image: ``layers`` are (payload, base64 signature)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": digest_of(config)},
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                "size": len(payload),
                "digest": digest_of(payload),
                "annotations": {SIGNATURE_ANNOTATION: signature},
            }
            for payload, signature in layers
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def push_signatures(
    pusher: RawPusher, repo: str, digest: str, layers: list[tuple[bytes, str]]
) -> Pushed:
    """Push a signature image for image ``digest`` of ``repo`` (tag ``sha256-<hex>.sig``)."""
    config = signature_config([p for p, _ in layers])
    blobs = {pusher.push_blob(repo, config): config}
    for payload, _ in layers:
        blobs[pusher.push_blob(repo, payload)] = payload
    body = signature_manifest(config, layers)
    tag = signature_tag(digest)
    pushed_digest = pusher.push_manifest(repo, tag, body, OCI_MANIFEST)
    return Pushed(repo, tag, pushed_digest, body, blobs)


def cosign_sign(
    pusher: RawPusher, host: str, repo: str, digest: str, *signers: Signer
) -> tuple[bytes, Pushed]:
    """``cosign sign --key`` for each signer: one payload, one layer per signature."""
    payload = simple_signing_payload(f"{host}/{repo}", digest)
    pushed = push_signatures(pusher, repo, digest, [(payload, s.sign(payload)) for s in signers])
    return payload, pushed


def policy_yaml(rules: list[tuple[str, list[str] | None]]) -> str:
    """A verify policy: (repository glob, PEM texts or key file paths, or None for ``none``)."""
    lines = ["rules:"]
    for pattern, keys in rules:
        lines.append(f'  - repository: "{pattern}"')
        if keys is None:
            lines.append("    keys: none")
            continue
        lines.append("    keys:")
        for key in keys:
            if key.startswith("-----BEGIN"):
                lines.append("      - |")
                lines.extend(f"        {line}" for line in key.strip().splitlines())
            else:
                lines.append(f"      - {key}")
    return "\n".join(lines) + "\n"
