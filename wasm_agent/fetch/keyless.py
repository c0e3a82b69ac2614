"""Verify keyless (Fulcio certificate + Rekor entry) signatures offline.

Given :class:`~wasm_agent.fetch.sigstore_bundle.Evidence` and a policy rule's
:class:`KeylessIdentity` entries with their :class:`~wasm_agent.fetch.trust_root.TrustRoot`,
:func:`check` does, with no network access:

1. the Rekor entry: its log id names a log of the trusted root; the signed entry timestamp
   (SET) verifies with that log's key over the canonical JSON of body, integrated time, log
   id and index; an RFC 6962 inclusion proof, when present, hashes to its root and the signed
   checkpoint carries that root and verifies with the log key; the integrated time is inside
   the log key's validity; the entry's body names this signature, this certificate and the
   hash of the signed bytes;
2. the certificate: valid at the integrated time, and chains (cryptography's X.509 path
   validation at that time) to a Fulcio CA of the trusted root valid then;
3. the signature verifies over the signed bytes with the certificate's key;
4. the certificate's SAN (email or URI) and OIDC issuer extension (1.3.6.1.4.1.57264.1.8,
   else the legacy 1.3.6.1.4.1.57264.1.1) match an entry;
5. the signed payload names the module's manifest digest.

Each failure is a :class:`Problem` with a detail naming what was found.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from wasm_agent.fetch.sigstore_bundle import (
    SIMPLE_SIGNING,
    Evidence,
    EvidenceError,
    LogEntry,
    pem_certificates,
    simple_signing_problem,
    statement_problem,
)
from wasm_agent.fetch.trust_root import (
    TrustRoot,
    merkle_root,
    set_payload,
    verify_checkpoint,
    verify_signature,
)

ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"
ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"


class Problem(enum.StrEnum):
    """Why a keyless signature was refused (values are the metric's result labels)."""

    NO_SIGNATURE = "no_signature"
    UNTRUSTED_CHAIN = "untrusted_chain"
    EXPIRED_CERTIFICATE = "expired_certificate"
    MISSING_LOG_PROOF = "missing_log_proof"
    INVALID_LOG_PROOF = "invalid_log_proof"
    WRONG_KEY = "wrong_key"
    IDENTITY_MISMATCH = "identity_mismatch"
    ISSUER_MISMATCH = "issuer_mismatch"
    DIGEST_MISMATCH = "digest_mismatch"
    MALFORMED = "malformed"


# how close to passing each failure is: the closest one is reported
RANK = {
    Problem.NO_SIGNATURE: 0,
    Problem.MALFORMED: 1,
    Problem.UNTRUSTED_CHAIN: 2,
    Problem.MISSING_LOG_PROOF: 3,
    Problem.INVALID_LOG_PROOF: 3,
    Problem.EXPIRED_CERTIFICATE: 4,
    Problem.WRONG_KEY: 4,
    Problem.IDENTITY_MISMATCH: 5,
    Problem.ISSUER_MISMATCH: 6,
    Problem.DIGEST_MISMATCH: 7,
}


class Refused(Exception):
    """One piece of evidence failed ``problem``."""

    def __init__(self, problem: Problem, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem
        self.detail = detail


@dataclass(frozen=True)
class KeylessIdentity:
    """A policy entry: who may sign (SAN, exact or regular expression) and their OIDC issuer."""

    identity: str | None
    identity_regexp: str | None
    issuer: str | None
    issuer_regexp: str | None
    root: TrustRoot = field(compare=False, repr=False)
    origin: str = ""

    @property
    def fingerprint(self) -> str:
        """What the cache records for a module this entry verified (changes with the entry
        and with the trusted root's bytes)."""
        text = json.dumps(
            [self.identity, self.identity_regexp, self.issuer, self.issuer_regexp],
            separators=(",", ":"),
        )
        return "keyless:" + hashlib.sha256(f"{text}|{self.root.fingerprint}".encode()).hexdigest()

    def describe(self) -> str:
        who = self.identity if self.identity is not None else f"/{self.identity_regexp}/"
        by = self.issuer if self.issuer is not None else f"/{self.issuer_regexp}/"
        return f"{who} from {by}"

    def identity_matches(self, names: list[str]) -> bool:
        if self.identity is not None:
            return self.identity in names
        assert self.identity_regexp is not None
        pattern = re.compile(self.identity_regexp)
        return any(pattern.search(n) for n in names)

    def issuer_matches(self, issuer: str | None) -> bool:
        if issuer is None:
            return False
        if self.issuer is not None:
            return issuer == self.issuer
        assert self.issuer_regexp is not None
        return re.search(self.issuer_regexp, issuer) is not None


# -- the certificate --------------------------------------------------------------------------


def san_names(cert: Any) -> list[str]:
    """The email and URI subject alternative names of a certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *san.get_values_for_type(x509.RFC822Name),
        *san.get_values_for_type(x509.UniformResourceIdentifier),
    ]


def oidc_issuer(cert: Any) -> str | None:
    """The Fulcio OIDC issuer extension: v2 (DER UTF8String), else legacy (raw bytes)."""
    found = {
        ext.oid.dotted_string: ext.value.value
        for ext in cert.extensions
        if isinstance(ext.value, x509.UnrecognizedExtension)
    }
    raw = found.get(ISSUER_V2)
    if raw is not None:
        if len(raw) < 2 or raw[0] != 0x0C:  # UTF8String, short or long length
            return None
        length, start = raw[1], 2
        if length & 0x80:
            count = length & 0x7F
            length, start = int.from_bytes(raw[2 : 2 + count], "big"), 2 + count
        raw = raw[start : start + length]
    else:
        raw = found.get(ISSUER_V1)
    try:
        return raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        return None


def _code_signing(cert: Any) -> None:
    """Fulcio's profile: key usage digitalSignature, extended key usage codeSigning."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as missing:
        raise Refused(
            Problem.UNTRUSTED_CHAIN,
            f"the certificate is not a code-signing certificate ({missing})",
        ) from None
    if not usage.digital_signature or ExtendedKeyUsageOID.CODE_SIGNING not in extended:
        raise Refused(
            Problem.UNTRUSTED_CHAIN,
            "the certificate is not a code-signing certificate (key usage digitalSignature, "
            "extended key usage codeSigning)",
        )


def _verify_chain(cert: Any, chain: tuple[bytes, ...], root: TrustRoot, when: datetime) -> None:
    anchors = [c for ca in root.authorities if ca.valid.contains(when) for c in ca.certificates]
    if not anchors:
        raise Refused(
            Problem.UNTRUSTED_CHAIN, f"no Fulcio CA of the trusted root is valid at {when:%FT%TZ}"
        )
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(when)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        intermediates = [x509.load_der_x509_certificate(der) for der in chain]
        verifier.verify(cert, intermediates)
    except (VerificationError, ValueError) as error:
        raise Refused(
            Problem.UNTRUSTED_CHAIN,
            f"the certificate (issuer {cert.issuer.rfc4514_string()!r}) does not chain to a "
            f"Fulcio CA of the trusted root: {error}",
        ) from None
    except Exception as error:  # e.g. UnsupportedGeneralNameType
        raise Refused(
            Problem.UNTRUSTED_CHAIN, f"the certificate cannot be validated: {error}"
        ) from None


# -- the log entry ----------------------------------------------------------------------------


def _check_entry(evidence: Evidence, cert_der: bytes, root: TrustRoot) -> datetime:
    """Verify the log entry; returns its integrated time."""
    entry = evidence.entry
    if entry is None:
        raise Refused(Problem.MISSING_LOG_PROOF, "the signature carries no Rekor log entry")
    log = root.log(entry.log_id)
    if log is None:
        raise Refused(
            Problem.INVALID_LOG_PROOF,
            f"the entry's log id {entry.log_id.hex()[:16]} is not a log of the trusted root",
        )
    if entry.signed_entry_timestamp is None:
        raise Refused(
            Problem.MISSING_LOG_PROOF, "the entry has no signed entry timestamp (inclusion promise)"
        )
    if not verify_signature(log.key, entry.signed_entry_timestamp, set_payload(entry)):
        raise Refused(
            Problem.INVALID_LOG_PROOF, "the signed entry timestamp does not verify with the log key"
        )
    if entry.proof is not None:
        proof = entry.proof
        try:
            root_hash = merkle_root(proof.log_index, proof.tree_size, entry.body, proof.hashes)
        except ValueError as error:
            raise Refused(Problem.INVALID_LOG_PROOF, f"inclusion proof: {error}") from None
        if root_hash != proof.root_hash:
            raise Refused(
                Problem.INVALID_LOG_PROOF, "the inclusion proof does not hash to its root hash"
            )
        wrong = verify_checkpoint(proof.checkpoint, log.key, proof.tree_size, proof.root_hash)
        if wrong is not None:
            raise Refused(Problem.INVALID_LOG_PROOF, wrong)
    when = datetime.fromtimestamp(entry.integrated_time, tz=UTC)
    if not log.valid.contains(when):
        raise Refused(
            Problem.INVALID_LOG_PROOF, f"the log key was not valid at integrated time {when:%FT%TZ}"
        )
    _check_body(evidence, entry, cert_der)
    return when


def _check_body(evidence: Evidence, entry: LogEntry, cert_der: bytes) -> None:
    """The entry's body must be about this signature, certificate and payload."""
    try:
        body = json.loads(entry.body)
        kind, spec = body["kind"], body["spec"]
        if kind == "hashedrekord":
            digest = spec["data"]["hash"]["value"]
            pairs = [(spec["signature"]["content"], spec["signature"]["publicKey"]["content"])]
            expected = hashlib.sha256(evidence.signed).hexdigest()
        elif kind == "dsse":
            digest = spec["payloadHash"]["value"]
            pairs = [(s["signature"], s["verifier"]) for s in spec["signatures"]]
            expected = hashlib.sha256(evidence.payload).hexdigest()
        else:
            raise Refused(Problem.INVALID_LOG_PROOF, f"unsupported log entry kind {kind!r}")
        signature = base64.b64encode(evidence.signature).decode()
        found = any(
            sig == signature
            and cert_der in pem_certificates(base64.b64decode(key).decode(), "verifier")
            for sig, key in pairs
        )
    except (KeyError, TypeError, ValueError, EvidenceError):
        raise Refused(Problem.INVALID_LOG_PROOF, "the log entry body is malformed") from None
    if digest != expected or not found:
        raise Refused(
            Problem.INVALID_LOG_PROOF,
            "the log entry is for another signature, certificate or payload",
        )


# -- one piece of evidence --------------------------------------------------------------------


def check(
    evidence: Evidence, digest: str, name: str, entries: tuple[KeylessIdentity, ...]
) -> KeylessIdentity:
    """The entry under which ``evidence`` passes for image ``digest`` of repository ``name``;
    raises :class:`Refused`. Entries may name different trusted roots."""
    if evidence.certificate is None:
        raise Refused(Problem.UNTRUSTED_CHAIN, "the signature has no Fulcio certificate")
    try:
        cert = x509.load_der_x509_certificate(evidence.certificate)
    except ValueError:
        raise Refused(Problem.MALFORMED, "the certificate is not DER X.509") from None
    worst: Refused | None = None
    for root in {id(e.root): e.root for e in entries}.values():
        try:
            _check_against(evidence, cert, root)
        except Refused as refused:
            worst = (
                refused if worst is None or RANK[refused.problem] > RANK[worst.problem] else worst
            )
            continue
        return _match(evidence, cert, digest, name, [e for e in entries if e.root is root])
    assert worst is not None
    raise worst


def _check_against(evidence: Evidence, cert: Any, root: TrustRoot) -> None:
    when = _check_entry(evidence, evidence.certificate or b"", root)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise Refused(
            Problem.EXPIRED_CERTIFICATE,
            f"the certificate is valid {cert.not_valid_before_utc:%FT%TZ} to "
            f"{cert.not_valid_after_utc:%FT%TZ}, the log integrated the signature at "
            f"{when:%FT%TZ}",
        )
    _verify_chain(cert, evidence.chain, root, when)
    _code_signing(cert)
    if not verify_signature(cert.public_key(), evidence.signature, evidence.signed):
        raise Refused(Problem.WRONG_KEY, "the signature does not verify with its certificate")


def _match(
    evidence: Evidence, cert: Any, digest: str, name: str, entries: list[KeylessIdentity]
) -> KeylessIdentity:
    names, issuer = san_names(cert), oidc_issuer(cert)
    by_identity = [e for e in entries if e.identity_matches(names)]
    if not by_identity:
        wanted = "; ".join(e.describe() for e in entries)
        raise Refused(
            Problem.IDENTITY_MISMATCH,
            f"signed by {', '.join(names) or 'no email or URI identity'}, "
            f"the policy wants {wanted}",
        )
    entry = next((e for e in by_identity if e.issuer_matches(issuer)), None)
    if entry is None:
        wanted = "; ".join(e.describe() for e in by_identity)
        raise Refused(
            Problem.ISSUER_MISMATCH, f"certificate issuer {issuer!r}, the policy wants {wanted}"
        )
    problem = _payload_problem(evidence, digest, name)
    if problem is not None:
        raise Refused(*problem)
    return entry


def _payload_problem(evidence: Evidence, digest: str, name: str) -> tuple[Problem, str] | None:
    if evidence.payload_type == SIMPLE_SIGNING:
        found = simple_signing_problem(evidence.payload, digest, name)
    else:
        found = statement_problem(evidence.payload, digest)
    if found is None:
        return None
    reason, detail = found
    return Problem(reason), detail


def judge(
    found: list[Evidence | Refused], digest: str, name: str, entries: tuple[KeylessIdentity, ...]
) -> KeylessIdentity | Refused:
    """The entry that one piece of evidence passes under, else the failure closest to passing
    (no evidence at all: ``no_signature``)."""
    worst = Refused(Problem.NO_SIGNATURE, "no keyless signature (cosign tag or Sigstore bundle)")
    for item in found:
        if isinstance(item, Evidence):
            try:
                return check(item, digest, name, entries)
            except Refused as refused:
                item = Refused(refused.problem, f"{item.where}: {refused.detail}")
        if RANK[item.problem] > RANK[worst.problem] or worst.problem is Problem.NO_SIGNATURE:
            worst = item
    return worst
