"""Keyless signatures of OCI modules against a real docker-registry, both layouts.

The artifacts are what cosign writes (``tests/support/sigstore``): keyless ``cosign sign``
(tag ``sha256-<hex>.sig``, certificate/chain/bundle annotations) and cosign v3's Sigstore
bundle pushed as an OCI 1.1 referrer. Debian's docker-registry has no referrers API (it
answers 404), so the bundle is found through the referrers tag schema index ``sha256-<hex>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.cosign import Signer, cosign_sign, simple_signing_payload
from tests.support.oci_push import Pushed, RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.sigstore import (
    FulcioCA,
    KeylessSigner,
    RekorLog,
    keyless_policy_yaml,
    push_referrer,
    push_tag_signatures,
    sign_statement,
    sigstore_bundle,
    tag_signature,
    trusted_root_json,
)
from tests.support.wasm import padded_module
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.cosign import SIGNATURE_VERIFICATIONS, Reason
from wasm_agent.fetch.errors import SignatureFailure
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.oci import fetch_oci
from wasm_agent.fetch.trust_policy import PolicyError, TrustPolicy, parse_policy

pytestmark = pytest.mark.registry

WORKFLOW = "https://github.com/acme/filter/.github/workflows/release.yml@refs/heads/main"
GITHUB = "https://token.actions.githubusercontent.com"
CA, LOG = FulcioCA(), RekorLog()
SIGNER = KeylessSigner(CA, LOG, WORKFLOW)
ENTRY = {"identity": WORKFLOW, "issuer": GITHUB}
_seed = iter(range(40_000, 50_000))


@pytest.fixture(scope="module")
def root_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sigstore")
    (directory / "trusted_root.json").write_bytes(trusted_root_json([CA], [LOG]))
    return directory


def policy(root_dir: Path, *entries: dict[str, str], pattern: str = "**") -> TrustPolicy:
    text = keyless_policy_yaml([(pattern, list(entries or (ENTRY,)))], "trusted_root.json")
    return parse_policy(text, str(root_dir / "policy.yaml"), base=root_dir)


async def fetch(registry: Registry, url: str, pol: TrustPolicy):
    settings = FetchSettings(
        insecure_registries=frozenset({registry.host}),
        default_fetch_timeout=30.0,
        http_max_retries=2,
        verify_policy=pol,
    )
    return await fetch_oci(FetchRequest(url=url), settings)


def push(pusher: RawPusher) -> tuple[str, Pushed]:
    repo = unique_repo("keyless")
    return repo, pusher.push_wasm_artifact(repo, "v1", padded_module(3000, seed=next(_seed)))


def sign_tag(registry: Registry, pusher: RawPusher, repo: str, pushed: Pushed, signer=SIGNER,
             digest: str | None = None, **kw) -> None:  # fmt: skip
    payload = simple_signing_payload(f"{registry.host}/{repo}", digest or pushed.digest)
    push_tag_signatures(pusher, repo, pushed.digest, [tag_signature(signer, payload, **kw)])


def sign_bundle(registry: Registry, pusher: RawPusher, repo: str, pushed: Pushed, signer=SIGNER,
                digest: str | None = None, **kw) -> None:  # fmt: skip
    statement = sign_statement(f"{registry.host}/{repo}", digest or pushed.digest)
    push_referrer(pusher, repo, pushed, sigstore_bundle(signer, statement, **kw))


Sign = Callable[..., None]
LAYOUTS = pytest.mark.parametrize("sign", [sign_tag, sign_bundle], ids=["tag", "referrer"])


async def refused(registry: Registry, url: str, pol: TrustPolicy, reason: Reason) -> str:
    before = SIGNATURE_VERIFICATIONS.value(result=reason.value)
    with pytest.raises(SignatureFailure) as caught:
        await fetch(registry, url, pol)
    assert caught.value.reason is reason, caught.value.cause  # type: ignore[attr-defined]
    assert SIGNATURE_VERIFICATIONS.value(result=reason.value) == before + 1
    assert caught.value.result == "fetch_failure"
    return caught.value.cause


# -- valid ------------------------------------------------------------------------------------


@LAYOUTS
async def test_valid_keyless_signature_passes_before_the_layer_is_read(
    sign: Sign, root_dir: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed = push(oci_pusher)
    sign(oci_registry, oci_pusher, repo, pushed)
    pol = policy(root_dir)
    fetched = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), pol)
    (entry,) = pol.rules[0].keyless
    assert fetched.oci_digest == pushed.digest and fetched.verified_keys == (entry.fingerprint,)
    paths = [p for m, p in oci_registry.requests() if m == "GET" and f"/v2/{repo}/" in p]
    layer = json.loads(pushed.manifest)["layers"][0]["digest"]
    assert paths[-1] == f"/v2/{repo}/blobs/{layer}"  # the module layer comes last
    api = f"/v2/{repo}/referrers/{pushed.digest}?artifactType="
    if sign is sign_bundle:  # the referrers API is missing: the tag schema index is read
        assert any(p.startswith(api) for p in paths)
        assert f"/v2/{repo}/manifests/sha256-{pushed.hex}" in paths
    else:  # a valid signature in the .sig tag: the referrers are not looked up
        assert not any(p.startswith(api) for p in paths)


async def test_key_or_keyless_in_one_rule(
    root_dir: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    key = Signer.ecdsa()
    (root_dir / "k.pub").write_text(key.public_pem)
    text = keyless_policy_yaml([("**", [ENTRY])], "trusted_root.json") + "    keys: [k.pub]\n"
    pol = parse_policy(text, "policy.yaml", base=root_dir)
    repo, pushed = push(oci_pusher)
    cosign_sign(oci_pusher, oci_registry.host, repo, pushed.digest, key)
    fetched = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), pol)
    assert fetched.verified_keys == ((pol.rules[0].keys or ())[0].fingerprint,)
    repo, pushed = push(oci_pusher)
    sign_bundle(oci_registry, oci_pusher, repo, pushed)
    fetched = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), pol)
    assert fetched.verified_keys == (pol.rules[0].keyless[0].fingerprint,)


# -- every failure ----------------------------------------------------------------------------


async def test_no_signature(root_dir: Path, oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo, _ = push(oci_pusher)
    url = oci_registry.oci_url(repo, "v1")
    cause = await refused(oci_registry, url, policy(root_dir), Reason.NO_SIGNATURE)
    assert "no signature: no keyless signature" in cause
    assert oci_registry.count_blob_gets(repo) == 0


@LAYOUTS
async def test_valid_signature_by_the_wrong_identity(
    sign: Sign, root_dir: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed = push(oci_pusher)
    mallory = KeylessSigner(CA, LOG, "https://github.com/mallory/x/.github/workflows/r.yml@main")
    sign(oci_registry, oci_pusher, repo, pushed, mallory)
    url = oci_registry.oci_url(repo, "v1")
    cause = await refused(oci_registry, url, policy(root_dir), Reason.IDENTITY_MISMATCH)
    assert "identity mismatch" in cause and "mallory" in cause
    assert oci_registry.count_blob_gets(repo) <= 2  # signature blobs only, never the module


CASES: list[tuple[str, Reason, Callable[[], dict], str]] = [
    ("issuer", Reason.ISSUER_MISMATCH,
     lambda: {"signer": KeylessSigner(CA, LOG, WORKFLOW, "https://gitlab.test")}, "gitlab"),
    ("chain", Reason.UNTRUSTED_CHAIN,
     lambda: {"signer": KeylessSigner(FulcioCA("rogue"), LOG, WORKFLOW)}, "does not chain"),
    ("expired", Reason.EXPIRED_CERTIFICATE,
     lambda: {"signer": KeylessSigner(CA, LOG, WORKFLOW, cert_options={
         "not_before": datetime.now(UTC) - timedelta(hours=1)})}, "integrated the signature"),
    ("no-log", Reason.MISSING_LOG_PROOF, lambda: {"log": False}, "no Rekor log entry"),
    ("other-log", Reason.INVALID_LOG_PROOF,
     lambda: {"signer": KeylessSigner(CA, RekorLog(), WORKFLOW)}, "not a log of the trusted"),
    ("digest", Reason.DIGEST_MISMATCH, lambda: {"digest": "sha256:" + "0" * 64}, "sha256:000"),
]  # fmt: skip


@LAYOUTS
@pytest.mark.parametrize(
    ("reason", "make", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_each_failure_is_named(
    sign: Sign, reason: Reason, make: Callable[[], dict], words: str, root_dir: Path,
    oci_registry: Registry, oci_pusher: RawPusher,
) -> None:  # fmt: skip
    repo, pushed = push(oci_pusher)
    sign(oci_registry, oci_pusher, repo, pushed, **make())
    url = oci_registry.oci_url(repo, "v1")
    cause = await refused(oci_registry, url, policy(root_dir), reason)
    assert f"signature check failed for repository {oci_registry.host}/{repo}: " in cause
    assert words in cause


async def test_invalid_inclusion_proof(
    root_dir: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed = push(oci_pusher)
    sign_bundle(oci_registry, oci_pusher, repo, pushed, tamper_proof=True)
    url = oci_registry.oci_url(repo, "v1")
    cause = await refused(oci_registry, url, policy(root_dir), Reason.INVALID_LOG_PROOF)
    assert "inclusion proof" in cause


async def test_one_valid_signature_among_bad_ones_passes(
    root_dir: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed = push(oci_pusher)
    sign_tag(
        oci_registry, oci_pusher, repo, pushed, KeylessSigner(FulcioCA("rogue"), LOG, WORKFLOW)
    )
    sign_bundle(oci_registry, oci_pusher, repo, pushed, digest="sha256:" + "1" * 64)
    sign_bundle(oci_registry, oci_pusher, repo, pushed)
    assert (await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), policy(root_dir))).data


# -- the policy -------------------------------------------------------------------------------


def test_policy_errors_name_the_line(root_dir: Path) -> None:
    def error(text: str) -> str:
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, "p.yaml", base=root_dir)
        return str(caught.value)

    rule = 'rules:\n  - repository: "**"\n    keyless:\n'
    assert "p.yaml:4: keyless entry needs a trustedRoot" in error(
        rule + '      - {identity: a@b.c, issuer: "https://i"}\n'
    )
    top = "trustedRoot: trusted_root.json\n" + rule
    assert "p.yaml:5: keyless entry has both 'identity' and 'identityRegExp'" in error(
        top + '      - {identity: a, identityRegExp: b, issuer: "https://i"}\n'
    )
    assert "p.yaml:5: keyless entry has no 'issuer' or 'issuerRegExp'" in error(
        top + "      - {identity: a}\n"
    )
    assert "p.yaml:5: 'identityRegExp' is not a regular expression" in error(
        top + '      - {identityRegExp: "(", issuer: i}\n'
    )
    assert "p.yaml:1: cannot read trusted root" in error(
        "trustedRoot: missing.json\n" + rule + "      - {identity: a, issuer: i}\n"
    )
    (root_dir / "bad.json").write_text('{"mediaType": "x"}')
    assert "is not a Sigstore trusted root" in error(
        "trustedRoot: bad.json\n" + rule + "      - {identity: a, issuer: i}\n"
    )
    assert "'keys: none' next to 'keyless'" in error(
        top + "      - {identity: a, issuer: i}\n    keys: none\n"
    )
    assert "p.yaml:5: unknown key 'subject' in a keyless entry" in error(
        top + "      - {subject: a, issuer: i}\n"
    )


async def test_a_registry_with_the_referrers_api_is_not_read_through_the_tag(
    root_dir: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    from tests.support.registry_proxy import Fault, RegistryProxy

    repo, pushed = push(oci_pusher)
    sign_bundle(oci_registry, oci_pusher, repo, pushed)
    # a front whose referrers API answers with the index the registry holds (a 307 to it)
    index = f"{oci_registry.url}/v2/{repo}/manifests/sha256-{pushed.hex}"
    with RegistryProxy(oci_registry.url) as front:
        front.faults.append(Fault("GET", r"/referrers/", "redirect", times=5, location=index))
        settings_host = front.host
        url = f"oci://{settings_host}/{repo}:v1"
        fetched = await fetch_oci(
            FetchRequest(url=url),
            FetchSettings(
                insecure_registries=frozenset({settings_host, oci_registry.host}),
                default_fetch_timeout=30.0,
                verify_policy=policy(root_dir),
            ),
        )
        assert fetched.verified_keys
        assert front.count("GET", rf"/v2/{repo}/referrers/{pushed.digest}\?artifactType=") == 1
        assert front.count("GET", rf"/v2/{repo}/manifests/sha256-{pushed.hex}$") == 0
