"""``wasm-agent proxy`` start-up: named files checked first (exit 2), the listen directory
(only the default one is created), and a rate-limited warning while istiod is unreachable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agentproc import free_port
from tests.support.registry import refused_port
from tests.support.tls import generate
from wasm_agent.agent.upstream_probe import ProbeTarget, UpstreamProbe, probe

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def closed() -> Iterator[str]:
    """An address nothing listens on for the whole test (held bound, so no other test can
    take the port meanwhile)."""
    with refused_port() as port:
        yield f"127.0.0.1:{port}"


def proxy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "proxy", *args,
         "--status-address", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30, cwd=cwd,
    )  # fmt: skip


def test_missing_tls_files_exit_2_naming_the_file(tmp_path: Path) -> None:
    tls = generate(tmp_path / "tls")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    listen = ("--listen", f"unix:{tmp_path}/x.sock", "--cache-dir", str(tmp_path / "c"))
    cases = [
        (("--tls-ca", "/nonexistent"), "--tls-ca /nonexistent: no such file"),
        (("--tls-ca", str(tmp_path)), f"--tls-ca {tmp_path}: is a directory"),
        (("--tls-ca", str(junk)), f"--tls-ca {junk}: not a PEM CA bundle"),
        (("--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert), "--tls-key",
          "/nonexistent/key"), "--tls-key /nonexistent/key: no such file"),
        (("--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert), "--tls-key",
          str(tls.server_key)), "not a PEM certificate and its private key"),
        (("--tls-ca", str(tls.ca), "--token-file", "/nonexistent/token"),
         "--token-file /nonexistent/token: no such file"),
    ]  # fmt: skip
    for args, message in cases:
        result = proxy(*args, *listen)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "running" not in result.stderr
    assert not (tmp_path / "c").exists()


def test_listen_directory_must_exist_and_is_never_created(tmp_path: Path) -> None:
    result = proxy("--plaintext", "--listen", f"unix:{tmp_path}/no/dir/x.sock")
    assert result.returncode == 2
    assert (
        f"--listen unix:{tmp_path}/no/dir/x.sock: directory {tmp_path}/no/dir does not exist"
        in (result.stderr)
    )
    assert not (tmp_path / "no").exists()


def test_default_listen_creates_only_istios_directory_and_warns_about_istiod(
    tmp_path: Path, closed: str
) -> None:
    status = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "wasm_agent", "proxy", "--plaintext", "--discovery-address",
         closed, "--status-address", status, "--cache-dir",
         str(tmp_path / "cache"), "--log-level", "info"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("cannot reach istiod" in x for x in lines):
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
    time.sleep(1.5)  # more probes fail meanwhile: still one warning (rate-limited)
    with urllib.request.urlopen(f"http://{status}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    # unlabelled gauges and counters are exported before their first event
    assert "\nistio_agent_wasm_cache_entries 0\n" in metrics
    assert "\nistio_agent_istiod_connection_failures 0\n" in metrics
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=15) == 0
    text = "".join(lines) + rest
    warnings = [x for x in text.splitlines() if "cannot reach istiod" in x]
    assert len(warnings) == 1, text
    assert " warning " in warnings[0]
    assert f"discovery={closed}" in warnings[0] and 'cause="connection refused"' in warnings[0]
    assert (tmp_path / "etc" / "istio" / "proxy").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["etc"]  # the cache is created only when used
    assert "created the default listen directory" in text


def test_probe_reports_the_cause_and_warnings_are_rate_limited(
    caplog: pytest.LogCaptureFixture, closed: str
) -> None:
    import asyncio

    assert asyncio.run(probe(ProbeTarget(closed))) == "connection refused"
    assert asyncio.run(probe(ProbeTarget("unix:/nonexistent/sock"))) == "no such file or directory"
    watcher = UpstreamProbe(ProbeTarget(closed), lambda: False, repeat=60.0)
    with caplog.at_level("INFO", logger="wasm_agent.proxy"):
        for second in range(0, 120, 5):  # a failure every 5 s for 2 minutes
            watcher.record("connection refused", now=1000.0 + second)
        watcher.record(None, now=1125.0)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [("WARNING", "cannot reach istiod")] * 2 + [
        ("INFO", "istiod is reachable again")
    ]
    assert [r.failed_attempts for r in caplog.records] == [1, 13, 24]
