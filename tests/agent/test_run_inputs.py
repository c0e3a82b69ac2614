"""``run`` takes .wat files and remote modules and shows the plugin's metrics; every command
treats the same fault with the same exit status; proxy variables are named once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.modserver import ModServer

PLUGIN_WAT = """(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "requests")
  (data (i32.const 1040) "hello from wat")
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 1024) (i32.const 8) (i32.const 100)))
    (drop (call $inc (i32.load (i32.const 100)) (i64.const 1)))
    (drop (call $log (i32.const 2) (i32.const 1040) (i32.const 14)))
    (i32.const 0)))
"""


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def wat(tmp_path: Path) -> Path:
    path = tmp_path / "plugin.wat"
    path.write_text(PLUGIN_WAT)
    return path


@pytest.fixture
def wasm(tmp_path: Path, wat: Path) -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(wat.read_text()))


def test_run_compiles_wat_shows_metrics_and_keeps_side_effects_in_cache_dir(
    tmp_path: Path, wat: Path
) -> None:
    import wasmtime

    home = tmp_path / "no-home"
    env = {"HOME": str(home), "WASM_AGENT_HOST_CACHE": ""}
    result = _cli("run", str(wat), "--cache-dir", str(tmp_path / "cache"), env=env)
    assert result.returncode == 0, result.stderr
    assert "[info] hello from wat" in result.stdout
    assert "== metrics ==\nrequests 1\n" in result.stdout
    assert list((tmp_path / "cache" / "host").glob("*.cwasm"))  # the host cache follows it
    doc = json.loads(_cli("run", str(wat), "--json", env=env).stdout)
    assert doc["metrics"] == {"requests": 1}
    module = tmp_path / "plugin.wasm"
    module.write_bytes(wasmtime.wat2wasm(wat.read_text()))
    checked = _cli("check", str(module), "--cache-dir", str(tmp_path / "c2"), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert list((tmp_path / "c2" / "host").glob("*.cwasm"))
    assert _cli("check", str(module), env=env).returncode == 0
    assert not home.exists()  # a missing HOME is never created


def test_bad_wat_and_unreadable_modules_fail_with_1_in_run_and_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wat"
    bad.write_text("(module (func")
    result = _cli("run", str(bad))
    assert result.returncode == 1
    assert f"wasm-agent run: {bad}: not valid WebAssembly text: " in result.stderr
    for module in (tmp_path / "missing.wasm", tmp_path):
        ran = _cli("run", str(module))
        checked = _cli("check", str(module), "--format", "json")
        assert (ran.returncode, checked.returncode) == (1, 1), ran.stderr + checked.stderr
        assert f"wasm-agent run: cannot read {module}: " in ran.stderr
        assert "Traceback" not in ran.stderr + checked.stderr


def test_run_fetches_http_modules_through_the_cache(tmp_path: Path, wasm: bytes) -> None:
    import hashlib

    cache = tmp_path / "cache"
    with ModServer() as server:
        url = server.serve("/p.wasm", wasm)
        sha = hashlib.sha256(wasm).hexdigest()
        for _ in range(2):
            result = _cli("run", url, "--sha256", sha, "--cache-dir", str(cache))
            assert result.returncode == 0, result.stderr
            assert "requests 1" in result.stdout
        assert server.counts["/p.wasm"] == 1  # the second run used the cache
        wrong = _cli("run", url, "--sha256", "0" * 64, "--cache-dir", str(tmp_path / "c2"))
    assert (cache / "modules" / f"{sha}.wasm").read_bytes() == wasm
    assert wrong.returncode == 1 and "sha256" in wrong.stderr


def test_run_fetches_oci_and_the_tls_hint_names_the_flag(
    tmp_path: Path, wasm: bytes, oci_registry, oci_pusher
) -> None:
    oci_pusher.push_wasm_artifact("run/plugin", "v1", wasm)
    url = f"oci://{oci_registry.host}/run/plugin:v1"
    cache = ("--cache-dir", str(tmp_path / "cache"), "--timeout", "20")
    result = _cli("run", url, *cache, "--insecure-registry", oci_registry.host)
    assert result.returncode == 0, result.stderr
    assert "requests 1" in result.stdout
    refused = _cli("run", url, "--cache-dir", str(tmp_path / "c2"), "--timeout", "20")
    assert refused.returncode == 1
    assert "pass --insecure-registry HOST or list " in refused.stderr
    assert " in WASM_INSECURE_REGISTRIES" in refused.stderr


def test_pull_secret_missing_or_malformed_is_2_in_every_command(tmp_path: Path) -> None:
    bad = tmp_path / "secret.json"
    bad.write_text("{not json")
    missing = tmp_path / "none.json"
    helper = tmp_path / "helper.json"  # a helper name that can never be run (review 4, 6)
    helper.write_text('{"auths": {}, "credsStore": "HELPERPW/../x"}')
    commands = [
        ("prefetch", "oci://127.0.0.1:9/x:1"),
        ("check", "oci://127.0.0.1:9/x:1"),
        ("run", "oci://127.0.0.1:9/x:1"),
    ]
    for command, module in commands:
        for secret, message in (
            (bad, f"--pull-secret: {bad}: malformed .dockerconfigjson: not valid JSON"),
            (missing, f"--pull-secret: cannot read {missing}: no such file"),
            (
                helper,
                f"--pull-secret: {helper}: malformed .dockerconfigjson: 'credsStore' is "
                "not a credential helper name",
            ),
        ):
            result = _cli(command, module, "--pull-secret", str(secret), "--cache-dir",
                          str(tmp_path / "c"))  # fmt: skip
            assert result.returncode == 2, (command, result.stderr)
            assert message in result.stderr, (command, result.stderr)
            assert "Errno" not in result.stderr and "{not json" not in result.stderr
            assert "HELPERPW" not in result.stderr


def test_proxy_variables_are_named_once(tmp_path: Path, wat: Path) -> None:
    env = {"HTTPS_PROXY": "http://user:pw@proxy.invalid:3128", "http_proxy": "http://p:1"}
    result = _cli("run", str(wat), "--log-level", "warning", env=env)
    assert result.returncode == 0, result.stderr
    lines = [x for x in result.stderr.splitlines() if "proxy variables are ignored" in x]
    assert len(lines) == 1 and "variables=HTTPS_PROXY,HTTP_PROXY" in lines[0]
    assert "pw" not in result.stderr


def test_an_unusable_verify_policy_is_2_in_run_and_check(tmp_path: Path, wat: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: [\n")
    for command in ("run", "check"):
        result = _cli(command, str(wat), "--verify-policy", str(policy))
        assert result.returncode == 2, (command, result.stderr)
        assert f"verify policy: {policy}:" in result.stderr


def test_host_cache_dir_order(tmp_path: Path) -> None:
    from wasm_agent.agent.inputs import host_cache_dir

    named = {"WASM_AGENT_HOST_CACHE": str(tmp_path / "h"), "HOME": str(tmp_path)}
    assert host_cache_dir(tmp_path / "c", named) == tmp_path / "h"
    assert host_cache_dir(tmp_path / "c", {"HOME": str(tmp_path)}) == tmp_path / "c" / "host"
    home = host_cache_dir(None, {"HOME": str(tmp_path)})
    assert home == tmp_path / ".cache" / "wasm-agent" / "host"
    scratch = host_cache_dir(None, {"HOME": str(tmp_path / "missing")})
    assert scratch.is_dir() and not (tmp_path / "missing").exists()
