"""Offline keyless verification (pure): a test Fulcio CA, Rekor log and OIDC identities.

Every failure the verifier names is produced from otherwise valid artifacts in the bytes
cosign writes (``tests/support/sigstore``): the tag layout of keyless ``cosign sign`` (v2) and
the Sigstore bundle v0.3 of ``cosign sign`` (v3).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.cosign import simple_signing_payload
from tests.support.sigstore import (
    FulcioCA,
    KeylessSigner,
    RekorLog,
    TagSignature,
    audit_path,
    sign_statement,
    sigstore_bundle,
    tag_signature,
    tree_hash,
    trusted_root_json,
)
from wasm_agent.fetch import keyless, trust_root
from wasm_agent.fetch import sigstore_bundle as sb
from wasm_agent.fetch.keyless import KeylessIdentity, Problem, Refused
from wasm_agent.fetch.trust_root import TrustRootError, parse_time, parse_trust_root

NAME = "r.test/acme/filter"
DIGEST = "sha256:" + "ab" * 32
WORKFLOW = "https://github.com/acme/filter/.github/workflows/release.yml@refs/heads/main"
GITHUB = "https://token.actions.githubusercontent.com"
CA, LOG = FulcioCA(), RekorLog()
ROOT = parse_trust_root(trusted_root_json([CA], [LOG]), "root.json")


def entry(
    identity: str | None = WORKFLOW,
    issuer: str | None = GITHUB,
    *,
    identity_regexp: str | None = None,
    issuer_regexp: str | None = None,
    root=ROOT,
) -> KeylessIdentity:
    return KeylessIdentity(identity, identity_regexp, issuer, issuer_regexp, root, "policy:3")


def tag_evidence(sig: TagSignature) -> sb.Evidence:
    raw = base64.b64decode(sig.annotations["dev.cosignproject.cosign/signature"])
    return sb.from_cosign_layer(sig.payload, raw, sig.annotations, "sha256-x.sig")


def signed_tag(signer: KeylessSigner, digest: str = DIGEST, **kw) -> sb.Evidence:
    return tag_evidence(tag_signature(signer, simple_signing_payload(NAME, digest), **kw))


def signed_bundle(signer: KeylessSigner, digest: str = DIGEST, **kw) -> sb.Evidence:
    return sb.from_bundle(sigstore_bundle(signer, sign_statement(NAME, digest), **kw), "ref")


def refused(evidence: sb.Evidence, *entries: KeylessIdentity) -> Refused:
    with pytest.raises(Refused) as caught:
        keyless.check(evidence, DIGEST, NAME, entries or (entry(),))
    return caught.value


SIGNER = KeylessSigner(CA, LOG, WORKFLOW)
LAYOUTS = pytest.mark.parametrize("make", [signed_tag, signed_bundle], ids=["tag", "bundle"])


# -- valid ------------------------------------------------------------------------------------


@LAYOUTS
def test_valid_keyless_signature_passes(make) -> None:
    assert keyless.check(make(SIGNER), DIGEST, NAME, (entry(),)) == entry()


def test_email_identity_regexp_and_legacy_issuer_extension() -> None:
    signer = KeylessSigner(
        CA, LOG, "dev@acme.test", "https://accounts.google.com", {"issuer_oid": "v1"}
    )
    wanted = entry(None, None, identity_regexp=r"@acme\.test$", issuer_regexp=r"^https://acc")
    assert keyless.check(signed_tag(signer), DIGEST, NAME, (wanted,)) == wanted
    assert keyless.oidc_issuer(signer.cert) == "https://accounts.google.com"


def test_bundle_without_inclusion_proof_passes_on_the_set() -> None:
    assert keyless.check(signed_bundle(SIGNER, proof=False), DIGEST, NAME, (entry(),))


# -- each failure -----------------------------------------------------------------------------


def test_no_signature() -> None:
    verdict = keyless.judge([], DIGEST, NAME, (entry(),))
    assert isinstance(verdict, Refused) and verdict.problem is Problem.NO_SIGNATURE


@LAYOUTS
def test_valid_signature_by_the_wrong_identity(make) -> None:
    mallory = KeylessSigner(CA, LOG, "https://github.com/mallory/x/.github/workflows/r.yml@main")
    error = refused(make(mallory))
    assert error.problem is Problem.IDENTITY_MISMATCH
    assert "mallory" in error.detail and WORKFLOW in error.detail


@LAYOUTS
def test_issuer_mismatch(make) -> None:
    signer = KeylessSigner(CA, LOG, WORKFLOW, "https://gitlab.test")
    error = refused(make(signer))
    assert error.problem is Problem.ISSUER_MISMATCH and "https://gitlab.test" in error.detail


@LAYOUTS
def test_untrusted_chain(make) -> None:
    rogue = KeylessSigner(FulcioCA("rogue"), LOG, WORKFLOW)
    error = refused(make(rogue))
    assert error.problem is Problem.UNTRUSTED_CHAIN and "rogue-intermediate" in error.detail


def test_ca_outside_its_validity_window_is_untrusted() -> None:
    ended = parse_trust_root(
        trusted_root_json([CA], [LOG], ca_end=datetime.now(UTC) - timedelta(days=1))
    )
    error = refused(signed_tag(SIGNER), entry(root=ended))
    assert error.problem is Problem.UNTRUSTED_CHAIN and "no Fulcio CA" in error.detail


def test_certificate_without_code_signing_is_untrusted() -> None:
    signer = KeylessSigner(CA, LOG, WORKFLOW, cert_options={"code_signing": False})
    error = refused(signed_tag(signer))
    assert error.problem is Problem.UNTRUSTED_CHAIN and "code-signing" in error.detail


def test_v2_issuer_extension_wins_over_the_legacy_one() -> None:
    only_v2 = KeylessSigner(CA, LOG, WORKFLOW, cert_options={"issuer_oid": "v2"})
    assert keyless.oidc_issuer(only_v2.cert) == GITHUB
    assert keyless.check(signed_bundle(only_v2), DIGEST, NAME, (entry(),)) == entry()


def test_expired_certificate_at_integrated_time() -> None:
    signer = KeylessSigner(
        CA, LOG, WORKFLOW, cert_options={"not_before": datetime.now(UTC) - timedelta(hours=2)}
    )
    error = refused(signed_tag(signer))
    assert error.problem is Problem.EXPIRED_CERTIFICATE
    assert "the log integrated the signature at" in error.detail


@LAYOUTS
def test_missing_log_proof(make) -> None:
    kw = {"log": False}
    error = refused(make(SIGNER, **kw))
    assert error.problem is Problem.MISSING_LOG_PROOF and "no Rekor log entry" in error.detail


def test_entry_of_an_unknown_log_is_an_invalid_log_proof() -> None:
    other = KeylessSigner(CA, RekorLog(), WORKFLOW)
    error = refused(signed_tag(other))
    assert error.problem is Problem.INVALID_LOG_PROOF and "not a log of the trusted root" in (
        error.detail
    )


def test_forged_set_is_an_invalid_log_proof() -> None:
    sig = tag_signature(SIGNER, simple_signing_payload(NAME, DIGEST))
    bundle = json.loads(sig.annotations["dev.sigstore.cosign/bundle"])
    bundle["Payload"]["integratedTime"] -= 1  # the SET no longer covers it
    sig.annotations["dev.sigstore.cosign/bundle"] = json.dumps(bundle)
    error = refused(tag_evidence(sig))
    assert error.problem is Problem.INVALID_LOG_PROOF and "signed entry timestamp" in error.detail


def test_tampered_inclusion_proof_is_an_invalid_log_proof() -> None:
    error = refused(signed_bundle(SIGNER, tamper_proof=True))
    assert error.problem is Problem.INVALID_LOG_PROOF and "inclusion proof" in error.detail


def test_log_entry_of_another_signature_is_an_invalid_log_proof() -> None:
    payload = simple_signing_payload(NAME, DIGEST)
    good = tag_signature(SIGNER, payload)
    other = tag_signature(SIGNER, simple_signing_payload(NAME, "sha256:" + "cd" * 32))
    good.annotations["dev.sigstore.cosign/bundle"] = other.annotations["dev.sigstore.cosign/bundle"]
    error = refused(tag_evidence(good))
    assert error.problem is Problem.INVALID_LOG_PROOF and "another signature" in error.detail


def test_signature_not_made_by_the_certificate_key() -> None:
    payload = simple_signing_payload(NAME, DIGEST)
    forged = KeylessSigner(CA, LOG, "x@y.test").raw_sign(payload)
    error = refused(tag_evidence(tag_signature(SIGNER, payload, signature=forged)))
    assert error.problem is Problem.WRONG_KEY


@LAYOUTS
def test_digest_mismatch(make) -> None:
    error = refused(make(SIGNER, "sha256:" + "cd" * 32))
    assert error.problem is Problem.DIGEST_MISMATCH and DIGEST in error.detail


def test_attestation_statement_is_not_a_signature() -> None:
    statement = json.loads(sign_statement(NAME, DIGEST))
    statement["predicateType"] = "https://slsa.dev/provenance/v1"
    evidence = sb.from_bundle(sigstore_bundle(SIGNER, json.dumps(statement).encode()), "ref")
    error = refused(evidence)
    assert error.problem is Problem.MALFORMED and "slsa.dev" in error.detail


def test_judge_reports_the_closest_failure() -> None:
    rogue = KeylessSigner(FulcioCA("rogue"), LOG, WORKFLOW)
    found: list[sb.Evidence | Refused] = [
        Refused(Problem.MALFORMED, "junk"),
        signed_tag(rogue),
        signed_tag(SIGNER, "sha256:" + "cd" * 32),
    ]
    verdict = keyless.judge(found, DIGEST, NAME, (entry(),))
    assert isinstance(verdict, Refused) and verdict.problem is Problem.DIGEST_MISMATCH
    found.append(signed_bundle(SIGNER))
    assert keyless.judge(found, DIGEST, NAME, (entry(),)) == entry()


# -- the pieces -------------------------------------------------------------------------------


def test_merkle_inclusion_proofs_match_rfc6962() -> None:
    for size in range(1, 20):
        leaves = [bytes([i]) * 32 for i in range(size)]
        for index in range(size):
            body = b"leaf %d" % index  # trust_root.merkle_root hashes the leaf body itself
            hashed = list(leaves)
            hashed[index] = hashlib.sha256(b"\x00" + body).digest()
            proof = tuple(audit_path(index, hashed))
            assert trust_root.merkle_root(index, size, body, proof) == tree_hash(hashed)
    with pytest.raises(ValueError, match="outside"):
        trust_root.merkle_root(5, 5, b"x", ())
    with pytest.raises(ValueError, match="needs"):
        trust_root.merkle_root(0, 4, b"x", ())


def test_trusted_root_parsing_errors_name_the_field() -> None:
    good = json.loads(trusted_root_json([CA], [LOG]))
    for change, message in [
        (lambda d: d.update(mediaType="x"), "is not a Sigstore trusted root"),
        (lambda d: d.update(tlogs=[]), "no tlogs"),
        (lambda d: d.update(certificateAuthorities=[]), "no certificateAuthorities"),
        (
            lambda d: d["tlogs"][0]["publicKey"].update(rawBytes="!"),
            "tlogs[0].publicKey.rawBytes is not base64",
        ),
        (
            lambda d: d["certificateAuthorities"][0]["validFor"].update(start="yesterday"),
            "certificateAuthorities[0].validFor is not RFC 3339",
        ),
    ]:
        doc = json.loads(json.dumps(good))
        change(doc)
        with pytest.raises(TrustRootError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_trust_root(json.dumps(doc).encode(), "root.json")
    with pytest.raises(TrustRootError, match="not valid JSON"):
        parse_trust_root(b"{", "root.json")
    assert parse_time("2022-12-31T23:59:59.999123456Z") == datetime(
        2022, 12, 31, 23, 59, 59, 999123, tzinfo=UTC
    )


def test_fingerprint_changes_with_the_entry_and_the_root() -> None:
    other_root = parse_trust_root(trusted_root_json([CA], [LOG, RekorLog()]))
    prints = {
        entry().fingerprint,
        entry(issuer="https://other.test").fingerprint,
        entry(root=other_root).fingerprint,
    }
    assert len(prints) == 3 and all(p.startswith("keyless:") for p in prints)
