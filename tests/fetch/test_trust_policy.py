"""The verify policy: YAML validation with file:line errors, glob matching, first match wins."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.cosign import Signer, policy_yaml
from wasm_agent.core.settings import SettingsError
from wasm_agent.fetch.trust_policy import (
    PolicyError,
    fetch_settings_from_env,
    load_policy,
    normalize_name,
    parse_policy,
)

ECDSA, ED25519 = Signer.ecdsa(), Signer.ed25519()


def fingerprint(signer: Signer) -> str:
    spki = signer.private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def test_rules_keys_and_none() -> None:
    policy = parse_policy(
        policy_yaml(
            [
                ("ghcr.io/acme/*", [ECDSA.public_pem, ED25519.public_pem]),
                ("ghcr.io/**", None),
            ]
        )
    )
    first, second = policy.rules
    assert first.required and not second.required
    assert [k.algorithm for k in first.keys or ()] == ["ecdsa-p256", "ed25519"]
    assert first.fingerprints == {fingerprint(ECDSA), fingerprint(ED25519)}
    assert first.origin == "<policy>:2" and second.origin == "<policy>:13"


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("ghcr.io/acme/*", "ghcr.io/acme/filter", True),
        ("ghcr.io/acme/*", "ghcr.io/acme/team/filter", False),  # * stays in one segment
        ("ghcr.io/acme/**", "ghcr.io/acme/team/filter", True),
        ("ghcr.io/acme/**", "ghcr.io/acmex/filter", False),
        ("ghcr.io/acme/filter-?", "ghcr.io/acme/filter-a", True),
        ("ghcr.io/acme/filter-?", "ghcr.io/acme/filter-ab", False),
        ("*/acme/filter", "quay.io/acme/filter", True),
        ("**", "127.0.0.1:5000/any/thing", True),
        ("127.0.0.1:*/wasm/*", "127.0.0.1:5000/wasm/x", True),
        ("ghcr.io/acme/filter", "ghcr.io/acme/filter", True),
        ("ghcr.io/acme/filter", "ghcr.io/acme/filter2", False),
        ("ghcr.io/a.c/*", "ghcr.io/abc/x", False),  # . is literal
        ("docker.io/nginx", "index.docker.io/library/nginx", True),  # Docker Hub aliases
        ("docker.io/acme/*", "index.docker.io/acme/x", True),
        ("GHCR.io/acme/*", "ghcr.io/acme/x", True),  # registry host is case-insensitive
    ],
)
def test_glob_matching(pattern: str, name: str, matches: bool) -> None:
    policy = parse_policy(policy_yaml([(pattern, None)]))
    assert (policy.rule_for(name) is not None) is matches


def test_first_match_wins_and_no_match_is_none() -> None:
    policy = parse_policy(
        policy_yaml(
            [
                ("ghcr.io/acme/experimental/*", None),
                ("ghcr.io/acme/**", [ECDSA.public_pem]),
            ]
        )
    )
    assert not policy.rule_for("ghcr.io/acme/experimental/x").required  # type: ignore[union-attr]
    assert policy.rule_for("ghcr.io/acme/x").required  # type: ignore[union-attr]
    assert policy.rule_for("quay.io/other/x") is None  # refused by the verifier (fail closed)


def test_key_files_are_relative_to_the_policy(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "cosign.pub").write_text(ECDSA.public_pem)
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml([("ghcr.io/**", ["keys/cosign.pub"])]))
    policy = load_policy(path)
    (key,) = policy.rules[0].keys or ()
    assert key.fingerprint == fingerprint(ECDSA)
    assert str(tmp_path / "keys" / "cosign.pub") in key.origin
    assert policy.source == str(path)


def test_single_key_string_is_accepted() -> None:
    text = 'rules:\n  - repository: "ghcr.io/**"\n    keys: |\n'
    text += "".join(f"      {line}\n" for line in ED25519.public_pem.strip().splitlines())
    (key,) = parse_policy(text).rules[0].keys or ()
    assert key.algorithm == "ed25519"


def _other_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "empty policy"),
        ("rules: [\n", 2, "not valid YAML"),
        ("rule:\n  - repository: a/b\n    keys: none\n", 1, "unknown key 'rule'"),
        ("rules:\n  - repository: a/b\n    kyes: none\n", 3, "unknown key 'kyes' in a rule"),
        ("rules:\n  - repository: a/b\n", 2, "rule has no 'keys'"),
        ("rules:\n  - keys: none\n", 2, "rule has no 'repository'"),
        ("rules: []\n", 1, "non-empty list"),
        ("rules:\n", 1, "non-empty list"),
        ("rules:\n  - repository: a/b\n    keys: []\n", 3, "keys: none"),
        ("rules:\n  - repository: a/b\n    keys: {a: b}\n", 3, "'keys' must be a list"),
        ("rules:\n  - repository: oci://a/b\n    keys: none\n", 2, "not a URL"),
        ("rules:\n  - repository: a/b:v1\n    keys: none\n", 2, "names a tag"),
        ("rules:\n  - repository: a/b@sha256:00\n    keys: none\n", 2, "digest"),
        ("rules:\n  - repository: nginx\n    keys: none\n", 2, "registry/repository"),
        ("rules:\n  - repository: 5\n    keys: none\n", 2, "must be a string"),
        ("rules:\n  - repository: a/b\n    keys: none\n    keys: none\n", 4, "duplicate key"),
        ("rules:\n  - repository: a/b\n    keys: [missing.pub]\n", 3, "cannot read key file"),
        ("rules:\n  - repository: a/b\n    keys: ['-----BEGIN X']\n", 3, "not a PEM public key"),
        ("rules:\n- repository: a/b\n  keys: none\n---\nrules: []\n", 5, "one YAML document"),
        ("- a\n", 1, "the policy must be a mapping"),
    ],
)
def test_malformed_policies_name_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}:{line}: "), str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
        (ec.generate_private_key(ec.SECP384R1()), "secp384r1"),
    ],
    ids=["rsa", "p384"],
)
def test_unsupported_key_types_are_refused(tmp_path: Path, key, kind: str) -> None:
    text = policy_yaml([("ghcr.io/**", [_other_pem(key)])])
    with pytest.raises(PolicyError, match=rf"^<policy>:4: unsupported key type .*{kind}"):
        parse_policy(text)


def test_unreadable_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")


def test_settings_read_the_flag_then_the_environment(tmp_path: Path) -> None:
    flag, env_file = tmp_path / "flag.yaml", tmp_path / "env.yaml"
    flag.write_text(policy_yaml([("flag.io/**", None)]))
    env_file.write_text(policy_yaml([("env.io/**", None)]))
    env = {"WASM_AGENT_VERIFY_POLICY": str(env_file)}
    assert fetch_settings_from_env({}).verify_policy is None
    from_env = fetch_settings_from_env(env).verify_policy
    assert from_env is not None and from_env.rules[0].pattern == "env.io/**"
    from_flag = fetch_settings_from_env(env, verify_policy=str(flag)).verify_policy
    assert from_flag is not None and from_flag.rules[0].pattern == "flag.io/**"
    env_file.write_text("rules: nope\n")
    with pytest.raises(SettingsError, match=rf"verify policy: {env_file}:1: "):
        fetch_settings_from_env(env)


def test_normalize_name() -> None:
    assert normalize_name("docker.io/nginx") == "index.docker.io/library/nginx"
    assert normalize_name("Registry-1.Docker.io/a/b") == "index.docker.io/a/b"
    assert normalize_name("ghcr.io/a/b") == "ghcr.io/a/b"


def test_deeply_nested_yaml_is_an_error_not_a_crash() -> None:
    with pytest.raises(PolicyError, match="nested too deeply"):
        parse_policy("rules: " + "[" * 100_000)
