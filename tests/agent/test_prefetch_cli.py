"""``wasm-agent prefetch`` as a real process: exit codes, output shapes, WasmPlugin manifests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.registry import oci_pusher, oci_registry  # noqa: F401  (fixtures)
from tests.support.wasm import minimal_module, padded_module, sha256_hex
from wasm_agent.agent.progress import ProgressDisplay

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[ModServer]:
    with ModServer() as srv:
        yield srv


def prefetch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "prefetch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


def test_help() -> None:
    result = prefetch("--help")
    assert result.returncode == 0
    for flag in (
        "--sha256",
        "--cache-dir",
        "--pull-secret",
        "--json",
        "-f",
        "--timeout",
        "--insecure-registry",
    ):
        assert flag in result.stdout


def test_one_url_prints_url_sha_and_path(tmp_path: Path, server: ModServer) -> None:
    data = minimal_module()
    url = server.serve("/m.wasm", data)
    result = prefetch(url, "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    path = tmp_path / "c" / "modules" / f"{sha256_hex(data)}.wasm"
    assert result.stdout == f"{url} {sha256_hex(data)} {path}\n"
    assert f"downloading {url}" in result.stderr  # plain progress lines when not a terminal
    assert path.read_bytes() == data


def test_json_shape_and_partial_failure_exit_1(tmp_path: Path, server: ModServer) -> None:
    good, other = minimal_module(), padded_module(500, seed=3)
    urls = [server.serve("/a.wasm", good), server.serve("/b.wasm", other), server.url("/none")]
    cache = ["--cache-dir", str(tmp_path / "c")]
    prefetch(urls[0], *cache)  # warm one of them
    result = prefetch(*urls, *cache, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert [set(o) for o in doc] == [{"url", "sha256", "path", "size", "cached", "error"}] * 3
    a, b, missing = doc
    assert (a["cached"], b["cached"], a["error"], b["error"]) == (True, False, None, None)
    assert (a["sha256"], a["size"]) == (sha256_hex(good), len(good))
    assert Path(b["path"]).read_bytes() == other
    assert missing["url"] == urls[2] and missing["sha256"] is None and "404" in missing["error"]
    assert f"wasm-agent prefetch: {urls[2]}: " in result.stderr


def test_checksum_mismatch_exit_1(tmp_path: Path, server: ModServer) -> None:
    url = server.serve("/m.wasm", minimal_module())
    result = prefetch(url, "--sha256", "ab" * 32, "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 1
    assert "ab" * 32 in result.stderr
    assert list((tmp_path / "c" / "modules").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one URL or -f FILE"),
        (("http://a/x", "http://b/y", "--sha256", "a" * 64), "--sha256 applies to exactly one"),
        (("http://a/x", "--sha256", "xyz"), "--sha256: not a sha256 hex digest"),
        (("http://a/x", "--timeout", "0"), "--timeout must be positive"),
        (("http://a/x", "--pull-secret", "/nonexistent/secret"), "--pull-secret: cannot read"),
        (("-f", "/nonexistent.yaml"), "/nonexistent.yaml: cannot read"),
        (("--bogus",), "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = prefetch(*args, "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_environment_is_a_usage_error(tmp_path: Path) -> None:
    env = {**os.environ, "WASM_MODULE_EXPIRY": "soon"}
    result = prefetch("http://a/x", "--cache-dir", str(tmp_path), env=env)
    assert result.returncode == 2 and "WASM_MODULE_EXPIRY" in result.stderr


def test_cache_dir_from_environment(tmp_path: Path, server: ModServer) -> None:
    env = {**os.environ, "WASM_AGENT_CACHE_DIR": str(tmp_path / "envcache")}
    result = prefetch(server.serve("/m.wasm", minimal_module()), env=env)
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "envcache" / "modules") in result.stdout


def test_unwritable_cache_dir_exit_1(tmp_path: Path, server: ModServer) -> None:
    (tmp_path / "file").write_text("x")
    result = prefetch(
        server.serve("/m.wasm", minimal_module()), "--cache-dir", str(tmp_path / "file" / "c")
    )
    assert result.returncode == 1
    assert "cannot create cache directory" in result.stderr
    assert "Not a directory" in result.stderr


MANIFEST = """\
apiVersion: v1
kind: ConfigMap
metadata: {{name: unrelated}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: by-http
spec:
  url: {http_url}
  sha256: {sha}
  phase: AUTHN
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: by-oci
spec:
  url: {oci_ref}
  imagePullPolicy: IfNotPresent
"""


def test_wasmplugin_manifests(tmp_path: Path, server: ModServer, oci_registry, oci_pusher) -> None:  # noqa: F811
    http_data, oci_data = padded_module(300, seed=21), padded_module(300, seed=22)
    oci_pusher.push_wasm_artifact("cli/plugin", "v2", oci_data)
    manifest = tmp_path / "plugins.yaml"
    manifest.write_text(
        MANIFEST.format(
            http_url=server.serve("/p.wasm", http_data),
            sha=sha256_hex(http_data),
            oci_ref=f"{oci_registry.host}/cli/plugin:v2",  # no scheme: OCI, as in a WasmPlugin
        )
    )
    result = prefetch(
        "-f",
        str(manifest),
        "--cache-dir",
        str(tmp_path / "c"),
        "--json",
        "--insecure-registry",
        oci_registry.host,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [o["sha256"] for o in doc] == [sha256_hex(http_data), sha256_hex(oci_data)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: WasmPlugin\nspec:\n\turl: x\n", "plugins.yaml:3:1: invalid YAML"),
        (
            "kind: WasmPlugin\nspec: {}\n---\nkind: WasmPlugin\nspec:\n  sha256: ab\n",
            "plugins.yaml:1: WasmPlugin '' has no spec.url",
        ),
        ("---\nkind: Service\n", "no WasmPlugin resource found"),
        (
            "kind: WasmPlugin\nspec:\n  url: http://h/x\n  imagePullPolicy: Sometimes\n",
            "unknown pull policy 'Sometimes'",
        ),
        ("- just\n- a list\n", "plugins.yaml:1: a document must be a mapping"),
    ],
)
def test_bad_manifests_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    manifest = tmp_path / "plugins.yaml"
    manifest.write_text(text)
    result = prefetch("-f", str(manifest), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert message in result.stderr


def test_terminal_progress_bars() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    one, two = display.callback("http://h/a.wasm"), display.callback("http://h/b.wasm")
    one(512, 1024)
    display._last_draw = 0  # no throttling between these two updates
    two(10, None)
    display.finish("http://h/a.wasm", "done")
    text = out.getvalue()
    assert "[############------------]" in text and "http://h/a.wasm done" in text
    assert "\x1b[2A" in text  # redraws in place


def test_warm_prefetch_imports_nothing_heavy(tmp_path: Path, server: ModServer) -> None:
    data = minimal_module()
    url = server.serve("/m.wasm", data)
    cache = ["--cache-dir", str(tmp_path / "c")]
    assert prefetch(url, *cache).returncode == 0
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "wasm_agent",
            "prefetch",
            url,
            *cache,
            "--sha256",
            sha256_hex(data),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "wasm_agent.cache" in imported
    heavy = {"asyncio", "httpx", "wasmtime", "grpc", "yaml", "ssl", "sqlite3", "google.protobuf"}
    assert not heavy & imported
    assert server.count("/m.wasm") == 1  # the warm run made no request


def test_progress_bar_on_a_terminal(tmp_path: Path, server: ModServer) -> None:
    import pty
    import threading

    url = server.slow("/m.wasm", padded_module(64 * 1024, seed=31), chunk=8192, delay=0.02)
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # read while the child writes: a full terminal buffer would block it
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wasm_agent",
                "prefetch",
                url,
                "--cache-dir",
                str(tmp_path / "c"),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            cwd=REPO,
        )
        os.close(follower)
        follower = -1
        reader.start()
        out, _ = proc.communicate(timeout=60)
        reader.join(30)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    terminal = b"".join(chunks).decode()
    assert proc.returncode == 0 and url in out
    assert "[########################]" in terminal and f"{url} done" in terminal
    assert "downloading" not in terminal  # bars, not plain lines
