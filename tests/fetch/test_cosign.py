"""Cosign signature verification of OCI modules against a real docker-registry.

The signature artifacts are the bytes ``cosign sign --key`` writes (``tests/support/cosign``):
simple-signing payload, OCI signature manifest tagged ``sha256-<hex>.sig``, signature in the
layer annotation; ECDSA P-256 and Ed25519 keys made with ``cryptography``.
"""

from __future__ import annotations

import base64
import re

import pytest

from tests.support.cosign import (
    Signer,
    cosign_sign,
    policy_yaml,
    push_signatures,
    signature_config,
    signature_manifest,
    simple_signing_payload,
)
from tests.support.oci_push import Pushed, RawPusher
from tests.support.registry import TOKEN_ANONYMOUS, Registry, unique_repo
from tests.support.wasm import padded_module
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch import cosign
from wasm_agent.fetch.cosign import SIGNATURE_VERIFICATIONS, Reason
from wasm_agent.fetch.errors import SignatureFailure
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.oci import fetch_oci
from wasm_agent.fetch.trust_policy import TrustPolicy, parse_policy

pytestmark = pytest.mark.registry

SIGNER, OTHER, ED = Signer.ecdsa(), Signer.ecdsa(), Signer.ed25519()
_seed = iter(range(10_000, 20_000))


def module() -> bytes:
    return padded_module(4096, seed=next(_seed))


def policy(*keys: Signer, pattern: str = "**") -> TrustPolicy:
    return parse_policy(policy_yaml([(pattern, [k.public_pem for k in keys])]))


def settings(registry: Registry, verify_policy: TrustPolicy | None) -> FetchSettings:
    return FetchSettings(
        insecure_registries=frozenset({registry.host}),
        default_fetch_timeout=30.0,
        http_max_retries=2,
        verify_policy=verify_policy,
    )


async def fetch(registry: Registry, url: str, verify_policy: TrustPolicy | None, **kw):
    return await fetch_oci(FetchRequest(url=url, **kw), settings(registry, verify_policy))


def push(pusher: RawPusher, prefix: str = "signed") -> tuple[str, Pushed, bytes]:
    repo = unique_repo(prefix)
    data = module()
    return repo, pusher.push_wasm_artifact(repo, "v1", data), data


def layer_digest(pushed: Pushed) -> str:
    import json

    return json.loads(pushed.manifest)["layers"][0]["digest"]


async def refused(registry: Registry, url: str, pol: TrustPolicy, reason: Reason) -> str:
    before = SIGNATURE_VERIFICATIONS.value(result=reason.value)
    with pytest.raises(SignatureFailure) as caught:
        await fetch(registry, url, pol)
    assert caught.value.reason is reason  # type: ignore[attr-defined]
    assert SIGNATURE_VERIFICATIONS.value(result=reason.value) == before + 1
    assert caught.value.result == "fetch_failure"  # Istio's closed label set
    return caught.value.cause


# -- the artifacts are cosign's bytes ---------------------------------------------------------


def test_payload_is_byte_exact_with_cosign() -> None:
    # sigstore/sigstore pkg/signature/payload: TestMarshalCosign, "no claims" and "standard"
    digest = "sha256:" + "d34db33f" * 8
    assert simple_signing_payload("example.com/test/image", digest) == (
        b'{"critical":{"identity":{"docker-reference":"example.com/test/image"},'
        b'"image":{"docker-manifest-digest":"' + digest.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    annotated = simple_signing_payload(
        "example.com/atomic/test/image", digest, {"timestamp": 1458239713, "creator": "atomic"}
    )
    assert annotated.endswith(b'"optional":{"creator":"atomic","timestamp":1458239713}}')


def test_signature_image_layout() -> None:
    payload = simple_signing_payload("r.io/a/b", "sha256:" + "0" * 64)
    config = signature_config([payload])
    assert config.startswith(b'{"architecture":"","created":"0001-01-01T00:00:00Z",')
    manifest = signature_manifest(config, [(payload, "c2ln")])
    assert manifest.startswith(
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":'
    )
    (layer,) = cosign.parse_signature_manifest(manifest)
    assert layer.signature == "c2ln" and layer.descriptor.size == len(payload)
    assert cosign.signature_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32 + ".sig"


# -- valid signatures -------------------------------------------------------------------------


@pytest.mark.parametrize("signer", [SIGNER, ED], ids=["ecdsa-p256", "ed25519"])
async def test_valid_signature_passes(
    oci_registry: Registry, oci_pusher: RawPusher, signer: Signer
) -> None:
    repo, pushed, data = push(oci_pusher)
    _, sig = cosign_sign(oci_pusher, oci_registry.host, repo, pushed.digest, signer)
    pol = policy(signer)
    before = SIGNATURE_VERIFICATIONS.value(result="success")
    fetched = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), pol)
    assert fetched.data == data and fetched.oci_digest == pushed.digest
    (key,) = pol.rules[0].keys or ()
    assert fetched.verified_keys == (key.fingerprint,)
    assert SIGNATURE_VERIFICATIONS.value(result="success") == before + 1
    # the signature is checked before the module layer is downloaded
    paths = [p for m, p in oci_registry.requests() if m == "GET" and f"/v2/{repo}/" in p]
    sig_at = paths.index(f"/v2/{repo}/manifests/{sig.reference}")
    assert paths.index(f"/v2/{repo}/blobs/{layer_digest(pushed)}") > sig_at


async def test_fetch_by_digest_is_verified_too(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed, _ = push(oci_pusher)
    url = oci_registry.oci_url(repo, digest=pushed.digest)
    cause = await refused(oci_registry, url, policy(SIGNER), Reason.NO_SIGNATURE)
    assert "no signature" in cause
    cosign_sign(oci_pusher, oci_registry.host, repo, pushed.digest, SIGNER)
    fetched = await fetch(oci_registry, url, policy(SIGNER), sha256=pushed.hex)
    assert fetched.verified_keys


async def test_any_trusted_key_and_any_signature_passes(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed, _ = push(oci_pusher)
    payload = simple_signing_payload(f"{oci_registry.host}/{repo}", pushed.digest)
    # two signatures (cosign appends a layer per `cosign sign`): an unknown key's, then ED's
    push_signatures(
        oci_pusher,
        repo,
        pushed.digest,
        [(payload, OTHER.sign(payload)), (payload, ED.sign(payload))],
    )
    pol = policy(SIGNER, ED)  # any one of the policy's keys
    fetched = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), pol)
    ed_key = (pol.rules[0].keys or ())[1]
    assert fetched.verified_keys == (ed_key.fingerprint,)


async def test_token_auth_registry_signature_uses_the_same_session(
    oci_registry_token: Registry, oci_token_server
) -> None:
    from tests.support.registry import PUSH_PASSWORD, PUSH_USER

    assert "public/*" in TOKEN_ANONYMOUS
    repo = unique_repo("public")
    with RawPusher(oci_registry_token.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        pushed = pusher.push_wasm_artifact(repo, "v1", module())
        cosign_sign(pusher, oci_registry_token.host, repo, pushed.digest, SIGNER)
    fetched = await fetch(
        oci_registry_token, oci_registry_token.oci_url(repo, "v1"), policy(SIGNER)
    )
    assert fetched.verified_keys


# -- refusals ---------------------------------------------------------------------------------


async def test_no_signature_is_refused_before_the_layer(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed, _ = push(oci_pusher)
    cause = await refused(
        oci_registry, oci_registry.oci_url(repo, "v1"), policy(SIGNER), Reason.NO_SIGNATURE
    )
    assert cause.startswith(f"signature check failed for repository {oci_registry.host}/{repo}")
    assert f"sha256-{pushed.hex}.sig" in cause
    assert oci_registry.count_blob_gets(repo) == 0  # the module itself was never downloaded


async def test_wrong_key(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo, pushed, _ = push(oci_pusher)
    cosign_sign(oci_pusher, oci_registry.host, repo, pushed.digest, OTHER)
    cause = await refused(
        oci_registry, oci_registry.oci_url(repo, "v1"), policy(SIGNER, ED), Reason.WRONG_KEY
    )
    assert "wrong key: no signature verifies with the 2 trusted keys" in cause


async def test_signature_of_another_image_is_a_digest_mismatch(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed, _ = push(oci_pusher)
    other = oci_pusher.push_wasm_artifact(repo, "v2", module())
    # a genuine signature of v2, replayed at v1's signature tag
    payload = simple_signing_payload(f"{oci_registry.host}/{repo}", other.digest)
    push_signatures(oci_pusher, repo, pushed.digest, [(payload, SIGNER.sign(payload))])
    cause = await refused(
        oci_registry, oci_registry.oci_url(repo, "v1"), policy(SIGNER), Reason.DIGEST_MISMATCH
    )
    assert other.digest in cause and pushed.digest in cause


async def test_signature_for_another_repository_is_an_identity_mismatch(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed, _ = push(oci_pusher)
    elsewhere = f"{oci_registry.host}/{unique_repo('elsewhere')}"
    payload = simple_signing_payload(elsewhere, pushed.digest)
    push_signatures(oci_pusher, repo, pushed.digest, [(payload, SIGNER.sign(payload))])
    cause = await refused(
        oci_registry, oci_registry.oci_url(repo, "v1"), policy(SIGNER), Reason.IDENTITY_MISMATCH
    )
    assert elsewhere in cause


async def test_tampered_payload_blob_is_caught_by_its_digest(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed, _ = push(oci_pusher)
    payload, _ = cosign_sign(oci_pusher, oci_registry.host, repo, pushed.digest, SIGNER)
    from tests.support.oci_push import digest_of

    forged = payload.replace(b"cosign container", b"COSIGN container")
    assert len(forged) == len(payload)
    oci_registry.tamper_blob(digest_of(payload), forged)
    cause = await refused(
        oci_registry, oci_registry.oci_url(repo, "v1"), policy(SIGNER), Reason.TAMPERED
    )
    assert "tampered signature payload" in cause and digest_of(payload) in cause


async def test_signed_payload_of_another_type_is_malformed(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed, _ = push(oci_pusher)
    payload = simple_signing_payload(f"{oci_registry.host}/{repo}", pushed.digest).replace(
        b"cosign container image signature", b"atomic container signature"
    )
    bad_b64 = "not base64!"
    push_signatures(
        oci_pusher, repo, pushed.digest, [(payload, SIGNER.sign(payload)), (payload, bad_b64)]
    )
    cause = await refused(
        oci_registry, oci_registry.oci_url(repo, "v1"), policy(SIGNER), Reason.MALFORMED
    )
    assert "atomic container signature" in cause


async def test_repository_without_a_rule_is_refused_without_a_request(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, _, _ = push(oci_pusher)
    pol = policy(SIGNER, pattern="ghcr.io/**")
    cause = await refused(oci_registry, oci_registry.oci_url(repo, "v1"), pol, Reason.NO_RULE)
    assert "matches no rule" in cause
    assert oci_registry.count_requests("GET", rf"^/v2/{re.escape(repo)}/") == 0


async def test_policy_none_needs_no_signature(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, _, data = push(oci_pusher, "exempt")
    pol = parse_policy(
        policy_yaml([(f"{oci_registry.host}/exempt/*", None), ("**", [SIGNER.public_pem])])
    )
    fetched = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), pol)
    assert fetched.data == data and fetched.verified_keys == ()
    assert not [
        p for _, p in oci_registry.requests() if p.startswith(f"/v2/{repo}/") and ".sig" in p
    ]


async def test_glob_picks_the_rule(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo_a, pushed_a, _ = push(oci_pusher, "team-a")
    repo_b, pushed_b, _ = push(oci_pusher, "team-b")
    cosign_sign(oci_pusher, oci_registry.host, repo_a, pushed_a.digest, SIGNER)
    cosign_sign(oci_pusher, oci_registry.host, repo_b, pushed_b.digest, SIGNER)
    host = oci_registry.host
    pol = parse_policy(
        policy_yaml([(f"{host}/team-a/*", [SIGNER.public_pem]), (f"{host}/**", [ED.public_pem])])
    )
    assert (await fetch(oci_registry, oci_registry.oci_url(repo_a, "v1"), pol)).verified_keys
    await refused(oci_registry, oci_registry.oci_url(repo_b, "v1"), pol, Reason.WRONG_KEY)


def test_evaluate_prefers_the_closest_failure() -> None:
    digest, name = "sha256:" + "1" * 64, "r.io/a/b"
    (key,) = policy(SIGNER).rules[0].keys or ()
    good = simple_signing_payload(name, digest)
    other = simple_signing_payload(name, "sha256:" + "2" * 64)
    verdict = cosign.evaluate(
        [(good, OTHER.sign(good)), (other, SIGNER.sign(other))], digest, name, (key,)
    )
    assert verdict.key is None and verdict.reason is Reason.DIGEST_MISMATCH
    assert cosign.evaluate([], digest, name, (key,)).reason is Reason.NO_SIGNATURE
    assert cosign.evaluate([(good, SIGNER.sign(good))], digest, name, (key,)).key == key
    # a signature over different bytes does not verify
    raw = base64.b64encode(SIGNER.raw_signature(good + b" ")).decode()
    assert cosign.evaluate([(good, raw)], digest, name, (key,)).reason is Reason.WRONG_KEY
    # a trusted signature over a payload that is not JSON (or absurdly nested) is malformed
    for junk in (b"not json", b"[" * 100_000):
        verdict = cosign.evaluate([(junk, SIGNER.sign(junk))], digest, name, (key,))
        assert verdict.reason is Reason.MALFORMED
    # Docker Hub spellings of the identity are the same repository
    hub = simple_signing_payload("docker.io/acme/filter", digest)
    hub_name = "index.docker.io/acme/filter"
    assert cosign.evaluate([(hub, SIGNER.sign(hub))], digest, hub_name, (key,)).key == key
