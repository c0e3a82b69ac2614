"""Secrets never leak: every byte the agent writes is searched for planted credentials.

Planted: a URL password and user-info (``http://alice:PASSW0RD…@``), a ``?token=`` query value,
and a registry pull secret (its password and its base64 ``auth`` value). Searched: stderr at
``--log-level debug``, ``prefetch --json``, ``cache ls`` (table and JSON), ``cache verify``,
the index and every file in the cache directory; for the proxy also every NACK
``error_detail`` sent upstream, ``/metrics`` and ``/healthz/ready``, and real Envoy's
``config_dump``. Must hold: none of the planted values appears anywhere, in any form.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tests.e2e import xds_config as xc
from tests.support.echo import EchoServer
from tests.support.faults import Agent, EnvoyMesh, extension, push, wait_nack
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.oci_push import oras_push_wasm
from tests.support.plugins_wat import header_plugin
from tests.support.registry import (
    PUSH_PASSWORD,
    PUSH_USER,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    Registry,
    unique_repo,
)
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.core.logs import LIBRARY_LOGGERS, JsonFormatter, TextFormatter, setup_logging

PULL_SECRET_ENV = "ISTIO_META_WASM_IMAGE_PULL_SECRET"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "PASSW0RD-q7Zx"
TOKEN = "SECRET-tok-4Kp9"
USERINFO = f"alice:{PASSWORD}"
PULL_AUTH = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
PLANTED = (PASSWORD, TOKEN, USERINFO, REGISTRY_PASSWORD, PULL_AUTH)


def leaks(where: str, data: bytes | str) -> list[str]:
    """Every planted secret found in ``data`` (plain, URL-quoted or JSON-escaped)."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    forms = {s: {s, s.replace("!", "%21"), json.dumps(s)[1:-1]} for s in PLANTED}
    return [f"{where}: {secret!r}" for secret, spellings in forms.items() if
            any(form in text for form in spellings)]  # fmt: skip


def cache_files(cache_dir: Path) -> Iterable[tuple[str, bytes]]:
    for path in sorted(cache_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield str(path), path.read_bytes()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "wasm_agent", *args]
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT, env=full)


def secret_url(server: ModServer, path: str) -> str:
    return server.url(path, userinfo=USERINFO) + f"?token={TOKEN}"


def assert_no_leak(outputs: Iterable[tuple[str, bytes | str]]) -> int:
    """Search every output; returns the number of bytes searched."""
    found: list[str] = []
    total = 0
    for where, data in outputs:
        total += len(data)
        found += leaks(where, data)
    assert not found, "secrets leaked:\n" + "\n".join(found)
    return total


def prefetch_results(text: str) -> str:
    """The lines ``prefetch`` prints about each module (its result lines), as opposed to logs."""
    return "\n".join(line for line in text.splitlines() if line.startswith("wasm-agent prefetch:"))


def without_results(where: str, text: str) -> str:
    """Logs only: drop prefetch's own result output (checked by the test below)."""
    if "prefetch" in where and "stdout" in where:
        return ""
    return "\n".join(
        line for line in text.splitlines() if not line.startswith("wasm-agent prefetch:")
    )


# Once a finding: prefetch printed each module's URL as given (stdout text and --json, and its
# error lines) with the user-info and query; it prints redact_url(url) now.


def test_prefetch_result_lines_never_print_a_url_secret(
    modserver: ModServer, cache_dir: Path
) -> None:
    """``prefetch`` (text and ``--json``, ok and failing) names modules without secrets."""
    modserver.serve("/plugin.wasm", padded_module(2048, seed=33))
    outputs: list[tuple[str, bytes | str]] = []
    for extra, path in (([], "/plugin.wasm"), (["--json"], "/plugin.wasm"), ([], "/none.wasm")):
        result = cli("prefetch", "--cache-dir", str(cache_dir), *extra, secret_url(modserver, path))
        outputs += [("stdout", result.stdout), ("stderr", prefetch_results(result.stderr))]
    assert_no_leak(outputs)


def test_prefetch_and_cache_commands_never_print_a_url_secret(
    modserver: ModServer, cache_dir: Path
) -> None:
    """``prefetch`` logs at debug (ok and failing), ``cache ls|verify`` and the cache files
    hold no password, user-info or token of the module URLs."""
    data = padded_module(2048, seed=31)
    url = secret_url(modserver, "/plugin.wasm")
    bad = secret_url(modserver, "/missing.wasm")
    outputs: list[tuple[str, bytes | str]] = []
    for argv in (
        ["prefetch", "--log-level", "debug", "--cache-dir", str(cache_dir), url],
        ["prefetch", "--log-level", "debug", "--json", "--cache-dir", str(cache_dir), url],
        ["prefetch", "--log-level", "debug", "--json", "--cache-dir", str(cache_dir), bad],
        ["prefetch", "--log-level", "debug", "--cache-dir", str(cache_dir), bad],
        ["prefetch", "--cache-dir", str(cache_dir), "--sha256", "0" * 64, url + "&x=1"],
        ["cache", "ls", "--cache-dir", str(cache_dir)],
        ["cache", "ls", "--json", "--cache-dir", str(cache_dir)],
        ["cache", "verify", "--log-level", "debug", "--cache-dir", str(cache_dir)],
    ):
        result = cli(*argv)
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            where = f"{argv[:2]} {stream}"
            outputs.append((where, without_results(where, text)))
    modserver.serve("/plugin.wasm", data)  # the first two found it missing: now it is there
    result = cli("prefetch", "--log-level", "debug", "--json", "--cache-dir", str(cache_dir), url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["sha256"] == sha256_hex(data)
    outputs.append(("prefetch ok stderr", without_results("stderr", result.stderr)))
    assert "HTTP Request" not in result.stderr  # library loggers stay below warning
    outputs += list(cache_files(cache_dir))
    assert (cache_dir / "index.json").is_file()
    assert assert_no_leak(outputs) > 1000


@pytest.mark.registry
def test_pull_secret_never_printed_or_stored(
    oci_registry_basic: Registry, cache_dir: Path, tmp_path: Path
) -> None:
    """``prefetch --pull-secret`` against a real htpasswd registry: the secret's password and
    ``auth`` value appear in no output and no cache file."""
    repo, module = unique_repo("secrets"), padded_module(1500, seed=32)
    host = oci_registry_basic.host
    oras_push_wasm(host, repo, "v1", module, tmp_path / "oras",
                   username=PUSH_USER, password=PUSH_PASSWORD)  # fmt: skip
    secret = tmp_path / "pull-secret.json"
    secret.write_text(json.dumps({"auths": {host: {"auth": PULL_AUTH}}}))
    env = {"WASM_INSECURE_REGISTRIES": host}
    url = oci_registry_basic.oci_url(repo, "v1")
    outputs: list[tuple[str, bytes | str]] = []
    for extra in ([], ["--json"], ["--sha256", "1" * 64]):
        argv = ["prefetch", "--log-level", "debug", "--cache-dir", str(cache_dir)]
        result = cli(*argv, "--pull-secret", str(secret), *extra, url, env=env)
        outputs += [(f"{extra} stdout", result.stdout), (f"{extra} stderr", result.stderr)]
    assert json.loads(outputs[2][1])[0]["sha256"] == sha256_hex(module)
    outputs += list(cache_files(cache_dir))
    assert_no_leak(outputs)


@pytest.mark.slow
@pytest.mark.registry
@pytest.mark.timeout(120)
def test_proxy_never_leaks_a_secret(
    workdir: Path,
    modserver: ModServer,
    istiod: FakeIstiod,
    echo: EchoServer,
    make_agent: Callable[..., Agent],
    oci_registry_basic: Registry,
) -> None:
    """``wasm-agent proxy --log-level debug`` with real Envoy: a module from a URL with
    user-info and a token loads; a wrong checksum on that URL and an OCI module with a pull
    secret are NACKed; the agent's log, every NACK's ``error_detail``, ``/metrics``,
    ``/healthz/ready``, Envoy's ``config_dump`` and the cache hold none of the secrets."""
    plugin = header_plugin("secret-1")
    url = secret_url(modserver, "/plugin.wasm")
    modserver.serve("/plugin.wasm", plugin)
    host = oci_registry_basic.host
    agent = make_agent("--log-level", "debug", env={"WASM_INSECURE_REGISTRIES": host})
    mesh = EnvoyMesh(workdir, agent, echo.port)
    mesh.start_envoy()
    try:
        push(istiod, extension(url, sha256_hex(plugin)), "v1")
        mesh.wait_ecds_version("v1")
        mesh.header_becomes("secret-1")
        nonces = push(istiod, extension(url, "2" * 64), "v2")
        nacks = [wait_nack(istiod, nonces, agent=agent)]
        pull = json.dumps({"auths": {host: {"auth": PULL_AUTH}}})
        oci = oci_registry_basic.oci_url(unique_repo("absent"), "v1")
        config = xc.wasm_extension(oci, "3" * 64, env={PULL_SECRET_ENV: pull})
        nonces = push(istiod, config, "v3")
        nacks.append(wait_nack(istiod, nonces, agent=agent))
        outputs: list[tuple[str, bytes | str]] = [
            (f"NACK {n.response_nonce}", n.error_detail.SerializeToString()) for n in nacks
        ]
        assert all(n.error_detail.message for n in nacks)
        assert mesh.envoy is not None
        outputs.append(("envoy config_dump", json.dumps(mesh.envoy.config_dump())))
        for path in ("/metrics", "/healthz/ready", "/"):
            status = agent.status(path, allow_error=True)
            outputs.append((f"status {path}", str(status)))
    finally:
        mesh.stop_envoy()
    agent.stop()
    outputs.append(("agent log (debug)", agent.log_path.read_bytes()))
    outputs += list(cache_files(agent.cache_dir))
    assert b"debug" in agent.log_path.read_bytes()
    assert_no_leak(outputs)


def test_formatters_scrub_library_lines_and_fields() -> None:
    """The redacting formatters, on what httpx logs and on careless fields: no secret in the
    text or JSON line, library lines are ``key=value``, library loggers stay at warning."""
    url = f"http://{USERINFO}@127.0.0.1:1/plugin.wasm?token={TOKEN}"
    library = logging.LogRecord("httpx", logging.INFO, "", 0, "HTTP Request: GET %s", (url,), None)
    careless = logging.LogRecord("wasm_agent.x", logging.INFO, "", 0, f"fetching {url}", (), None)
    careless.url = url
    careless.header = f"Authorization: Basic {PULL_AUTH}"
    careless.form = f"password={REGISTRY_PASSWORD}&token={TOKEN}"
    lines = [
        formatter.format(record)
        for formatter in (TextFormatter(), JsonFormatter())
        for record in (library, careless)
    ]
    assert_no_leak([(line, line) for line in lines])
    assert "httpx: library log msg=" in lines[0] and "127.0.0.1:1/plugin.wasm" in lines[0]
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        setup_logging("debug")
        assert all(logging.getLogger(n).getEffectiveLevel() >= logging.WARNING
                   for n in ("httpx", "httpcore", "grpc", "hpack"))  # fmt: skip
    finally:
        logging.getLogger().handlers[:] = saved[0]
        logging.getLogger().setLevel(saved[1])
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
