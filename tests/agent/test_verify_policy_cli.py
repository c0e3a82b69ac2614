"""``--verify-policy`` / ``WASM_AGENT_VERIFY_POLICY`` on prefetch, check and proxy (processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.check.helpers import C_HEADERS, run_cli
from tests.support.cosign import Signer, cosign_sign, policy_yaml
from tests.support.oci_push import RawPusher
from tests.support.plugins import plugin
from tests.support.registry import Registry, free_port, unique_repo
from tests.support.wasm import padded_module

pytestmark = pytest.mark.registry

REPO = Path(__file__).resolve().parents[2]
SIGNER = Signer.ecdsa()
BAD_POLICY = "rules:\n  - repository: a/b\n    keys: none\n    trust: always\n"


def run(command: str, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    (tmp_path / "cosign.pub").write_text(SIGNER.public_pem)
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml([("**", ["cosign.pub"])]))
    return path


def signed_and_unsigned(registry: Registry, pusher: RawPusher, data: bytes) -> tuple[str, str]:
    signed, unsigned = unique_repo("cli-signed"), unique_repo("cli-unsigned")
    pushed = pusher.push_wasm_artifact(signed, "v1", data)
    cosign_sign(pusher, registry.host, signed, pushed.digest, SIGNER)
    pusher.push_wasm_artifact(unsigned, "v1", data)
    return registry.oci_url(signed, "v1"), registry.oci_url(unsigned, "v1")


def test_prefetch_verifies_and_refuses(
    tmp_path: Path, policy_file: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    signed, unsigned = signed_and_unsigned(oci_registry, oci_pusher, padded_module(3000, seed=71))
    common = ("--cache-dir", str(tmp_path / "c"), "--insecure-registry", oci_registry.host)
    result = run("prefetch", signed, unsigned, *common, "--verify-policy", str(policy_file))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{signed} ")
    repository = unsigned.removeprefix("oci://").rsplit(":", 1)[0]
    assert (
        f"wasm-agent prefetch: {unsigned}: signature check failed for repository {repository}: "
        "no signature" in result.stderr
    )
    # the environment variable works the same, and a warm run needs no registry
    env = {"WASM_AGENT_VERIFY_POLICY": str(policy_file)}
    warm = run("prefetch", signed, *common, "--json", env=env)
    assert warm.returncode == 0, warm.stderr
    assert json.loads(warm.stdout)[0]["cached"] is True


@pytest.mark.parametrize("via", ["flag", "env"])
def test_prefetch_malformed_policy_exits_2(tmp_path: Path, via: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    args = ["--verify-policy", str(bad)] if via == "flag" else []
    env = {"WASM_AGENT_VERIFY_POLICY": str(bad)} if via == "env" else {}
    result = run("prefetch", "oci://r.example/a/b:v1", "--cache-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2
    assert f"verify policy: {bad}:4: unknown key 'trust' in a rule" in result.stderr


def test_check_reports_the_signature_failure(
    tmp_path: Path, policy_file: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    signed, unsigned = signed_and_unsigned(oci_registry, oci_pusher, plugin(C_HEADERS).read_bytes())
    args = ("--cache-dir", str(tmp_path / "c"), "--insecure-registry", oci_registry.host,
            "--verify-policy", str(policy_file), "--format", "json")  # fmt: skip
    result = run_cli(signed, unsigned, *args)
    assert result.returncode == 1, result.stderr
    first, second = json.loads(result.stdout)["modules"]
    assert first["passed"] is True
    fetch = next(c for c in second["checks"] if c["name"] == "fetch")
    assert fetch["status"] == "fail" and "no signature" in fetch["message"]
    assert "signature check failed for repository" in fetch["message"]


def test_check_malformed_policy_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    result = run_cli("oci://r.example/a/b:v1", "--verify-policy", str(bad))
    assert result.returncode == 2
    assert f"{bad}:4: unknown key 'trust'" in result.stderr


@pytest.mark.parametrize("via", ["flag", "env"])
def test_proxy_malformed_policy_exits_2(tmp_path: Path, via: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_POLICY)
    args = ["--verify-policy", str(bad)] if via == "flag" else []
    env = {"WASM_AGENT_VERIFY_POLICY": str(bad)} if via == "env" else {}
    result = run(
        "proxy", "--plaintext", "--cache-dir", str(tmp_path), "--listen", f"unix:{tmp_path}/x",
        "--status-address", f"127.0.0.1:{free_port()}", *args, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{bad}:4: unknown key 'trust'" in result.stderr


def test_help_lists_the_flag() -> None:
    for command in ("prefetch", "check", "proxy"):
        result = run(command, "--help")
        assert "--verify-policy" in result.stdout and "WASM_AGENT_VERIFY_POLICY" in result.stdout


# -- keyless (Fulcio certificate + Rekor entry, verified offline) ------------------------------


def keyless_setup(
    tmp_path: Path, registry: Registry, pusher: RawPusher, data: bytes
) -> tuple[Path, str, str]:
    """A keyless policy, a module signed by its identity (tag layout), one by another."""
    from tests.support.cosign import simple_signing_payload
    from tests.support.sigstore import (
        FulcioCA,
        KeylessSigner,
        RekorLog,
        keyless_policy_yaml,
        push_tag_signatures,
        tag_signature,
        trusted_root_json,
    )

    ca, log = FulcioCA(), RekorLog()
    (tmp_path / "trusted_root.json").write_bytes(trusted_root_json([ca], [log]))
    path = tmp_path / "keyless.yaml"
    entry = {"identity": "release@acme.test", "issuer": "https://accounts.google.com"}
    path.write_text(keyless_policy_yaml([("**", [entry])], "trusted_root.json"))
    urls = []
    for who in ("release@acme.test", "mallory@evil.test"):
        repo = unique_repo("cli-keyless")
        pushed = pusher.push_wasm_artifact(repo, "v1", data)
        signer = KeylessSigner(ca, log, who, "https://accounts.google.com")
        payload = simple_signing_payload(f"{registry.host}/{repo}", pushed.digest)
        push_tag_signatures(pusher, repo, pushed.digest, [tag_signature(signer, payload)])
        urls.append(registry.oci_url(repo, "v1"))
    return path, urls[0], urls[1]


def test_prefetch_enforces_a_keyless_policy(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    data = padded_module(3000, seed=72)
    policy, signed, wrong = keyless_setup(tmp_path, oci_registry, oci_pusher, data)
    common = ("--cache-dir", str(tmp_path / "c"), "--insecure-registry", oci_registry.host)
    result = run("prefetch", signed, wrong, *common, "--verify-policy", str(policy))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{signed} ")
    repository = wrong.removeprefix("oci://").rsplit(":", 1)[0]
    assert (
        f"wasm-agent prefetch: {wrong}: signature check failed for repository {repository}: "
        "identity mismatch: " in result.stderr
    )
    assert "signed by mallory@evil.test" in result.stderr


def test_check_enforces_a_keyless_policy(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    data = plugin(C_HEADERS).read_bytes()
    policy, signed, wrong = keyless_setup(tmp_path, oci_registry, oci_pusher, data)
    args = ("--cache-dir", str(tmp_path / "c"), "--insecure-registry", oci_registry.host,
            "--verify-policy", str(policy), "--format", "json")  # fmt: skip
    result = run_cli(signed, wrong, *args)
    assert result.returncode == 1, result.stderr
    first, second = json.loads(result.stdout)["modules"]
    assert first["passed"] is True
    fetch = next(c for c in second["checks"] if c["name"] == "fetch")
    assert fetch["status"] == "fail" and "identity mismatch" in fetch["message"]


def test_keyless_policy_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('rules:\n  - repository: "**"\n    keyless:\n      - {identity: a, issuer: b}\n')
    for command in ("prefetch", "check"):
        result = run(command, "oci://r.example/a/b:v1", "--verify-policy", str(bad))
        assert result.returncode == 2, result.stderr
        assert f"{bad}:4: keyless entry needs a trustedRoot" in result.stderr
