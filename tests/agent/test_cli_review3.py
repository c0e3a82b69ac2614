"""CLI items of review 3 (10-C, 10-F, 10-H, 10-I, 13-B, 13-C): one duration syntax for
``--timeout``, one style for missing files and directories, a floor for ``--max-message-size``,
the exit rule in the root ``--help``, labelled counters at 0 in a fresh proxy's ``/metrics``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.agentproc import free_port
from tests.support.registry import refused_port
from wasm_agent.agent.cli import EXIT_RULE
from wasm_agent.core.metrics import Registry

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MODULE = b"\0asm\1\0\0\0"


def agent(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env={**ENV, **(env or {})},
    )  # fmt: skip


def test_timeout_takes_durations_and_refuses_non_finite(tmp_path: Path) -> None:
    (tmp_path / "m.wasm").write_bytes(MODULE)
    cache = ("--cache-dir", str(tmp_path / "c"))
    for value in ("30s", "1m", "45", "500ms"):
        ok = agent("prefetch", "./m.wasm", "--timeout", value, *cache, cwd=tmp_path)
        assert ok.returncode == 0, (value, ok.stderr)
    for command in ("prefetch", "check", "run"):
        for value in ("nan", "inf", "0", "-5", "soon", "9" * 400):
            bad = agent(command, "./m.wasm", "--timeout", value, *cache, cwd=tmp_path)
            assert bad.returncode == 2, (command, value, bad.stderr)
            assert "--timeout" in bad.stderr, (command, value, bad.stderr)
    for value in ("nan", "inf", "0", "soon"):  # demo's step deadline: the same syntax
        bad = agent("demo", "--timeout", value, cwd=tmp_path)
        assert bad.returncode == 2, (value, bad.stderr)
        assert "--timeout" in bad.stderr, (value, bad.stderr)


def test_missing_files_and_directories_name_the_flag(tmp_path: Path) -> None:
    (tmp_path / "m.wasm").write_bytes(MODULE)
    (tmp_path / "file").write_text("x")
    cache = ("--cache-dir", str(tmp_path / "c"))
    cases = [
        (("prefetch", "-f", "/nonexistent.yaml"), "-f /nonexistent.yaml: cannot read: no such"),
        (("check", "-f", "/nonexistent.yaml"), "-f /nonexistent.yaml: cannot read: no such"),
        (("prefetch", "-f", str(tmp_path)), f"-f {tmp_path}: cannot read: is a directory"),
        (("prefetch", "./m.wasm", "--registry-config-dir", "/nonexistent"),
         "--registry-config-dir /nonexistent: no such directory"),
        (("run", "./m.wasm", "--registry-config-dir", str(tmp_path / "file")),
         f"--registry-config-dir {tmp_path / 'file'}: not a directory"),
    ]  # fmt: skip
    for args, message in cases:
        result = agent(*args, *cache, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "[Errno" not in result.stderr
    from_env = agent(
        "prefetch", "./m.wasm", *cache, cwd=tmp_path,
        env={"WASM_AGENT_REGISTRY_CONFIG_DIR": "/nonexistent"},
    )  # fmt: skip
    assert from_env.returncode == 2, from_env.stderr
    assert "[env WASM_AGENT_REGISTRY_CONFIG_DIR] /nonexistent: no such directory" in from_env.stderr
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    ok = agent("prefetch", "./m.wasm", "--registry-config-dir", str(hosts), *cache, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_max_message_size_has_a_floor(tmp_path: Path) -> None:
    for args, env in (
        (("--max-message-size", "1"), {}),
        ((), {"WASM_AGENT_MAX_MESSAGE_SIZE": "1k"}),
    ):
        result = agent(
            "proxy", "--plaintext", "--listen", f"unix:{tmp_path}/x.sock", *args,
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        named = "--max-message-size" if args else "WASM_AGENT_MAX_MESSAGE_SIZE"
        assert "at least 1Mi" in result.stderr and named in result.stderr, result.stderr


def test_root_help_ends_with_the_exit_rule(tmp_path: Path) -> None:
    result = agent("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert " ".join(result.stdout.split()).endswith(" ".join(EXIT_RULE.split()))


def test_node_takes_the_registry_flags_from_the_table() -> None:
    import argparse

    from wasm_agent.node.command import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--csi-endpoint", "unix:/tmp/x.sock", "--registry-config-dir", "/etc/hosts.d",
         "--credential-helper-ttl", "1m", "--credential-helper-timeout", "3s"]
    )  # fmt: skip
    fetch = settings_from_args(args).fetch
    assert fetch.registry_config_dir == Path("/etc/hosts.d")
    assert (fetch.credential_helper_ttl, fetch.credential_helper_timeout) == (60.0, 3.0)


def test_preset_counters_render_at_zero() -> None:
    registry = Registry()
    counter = registry.counter("evicted", "help", labels=("kind",)).preset(kind=("a", "b"))
    counter.inc(kind="a")
    text = registry.render()
    assert 'istio_agent_evicted{kind="a"} 1\n' in text
    assert 'istio_agent_evicted{kind="b"} 0\n' in text
    with pytest.raises(ValueError):
        counter.preset(other=("x",))


def test_a_fresh_proxy_exports_the_labelled_counters_at_zero(tmp_path: Path) -> None:
    status = free_port()
    with refused_port() as port:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wasm_agent", "proxy", "--plaintext", "--discovery-address",
             f"127.0.0.1:{port}", "--listen", f"unix:{tmp_path}/x.sock", "--status-address",
             f"127.0.0.1:{status}", "--cache-dir", str(tmp_path / "c")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV,
        )  # fmt: skip
        try:
            text = ""
            deadline = time.monotonic() + 60
            while not text:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "no /metrics in 60 s"
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{status}/metrics", timeout=5
                    ) as r:
                        text = r.read().decode()
                except OSError:
                    time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    for series in (
        'istio_agent_wasm_cache_eviction_count{kind="module"} 0',
        'istio_agent_wasm_cache_eviction_count{kind="compiled"} 0',
        'istio_agent_wasm_cache_lookup_count{hit="true"} 0',
        'istio_agent_wasm_cache_lookup_count{hit="false"} 0',
        'istio_agent_wasm_remote_fetch_count{result="success"} 0',
        'istio_agent_wasm_remote_fetch_count{result="download_failure"} 0',
        'istio_agent_wasm_config_conversion_count{result="success"} 0',
        'istio_agent_wasm_config_conversion_count{result="fetch_failure"} 0',
    ):
        assert series + "\n" in text, series
