"""``wasm-agent cache ls|verify|prune`` as real processes, on a cache filled by ``prefetch``
from a real local HTTP server; in-use holds come from another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.wasm import minimal_module, padded_module, sha256_hex

REPO = Path(__file__).resolve().parents[2]
A, B = minimal_module(), padded_module(3000, seed=1)
SHA_A, SHA_B = sha256_hex(A), sha256_hex(B)

HOLDER = """
import sys
from wasm_agent.core.settings import cache_settings_from_env
from wasm_agent.fetch.trust_policy import fetch_settings_from_env
from wasm_agent.cache import ModuleCache, ModuleRequest
cache = ModuleCache(cache_settings_from_env(sys.argv[1]), fetch_settings_from_env())
module = cache.lookup(ModuleRequest(url=sys.argv[2]))
cache.hold("test", [module])
print("held", flush=True)
sys.stdin.read()
"""


def wasm_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


@dataclass
class Filled:
    dir: Path
    server: ModServer
    url_a: str
    url_b: str

    def cache(self, *args: str, env: dict[str, str] | None = None):
        return wasm_agent("cache", *args, "--cache-dir", str(self.dir), env=env)

    def module(self, sha: str) -> Path:
        return self.dir / "modules" / f"{sha}.wasm"


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Filled]:
    with ModServer() as server:
        url_a, url_b = server.serve("/a.wasm", A), server.serve("/b.wasm", B)
        cache_dir = tmp_path / "cache"
        result = wasm_agent("prefetch", "--cache-dir", str(cache_dir), url_a, url_b)
        assert result.returncode == 0, result.stderr
        yield Filled(cache_dir, server, url_a, url_b)


@pytest.fixture
def holder(filled: Filled) -> Iterator[subprocess.Popen[str]]:
    """Another process holding module A in use (as the proxy does for a forwarded config)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(filled.dir), filled.url_a],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def age(path: Path, seconds: float) -> None:
    """Make a module look unused for ``seconds`` (its mtime is its last use)."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def test_ls_table_and_json(filled: Filled) -> None:
    result = filled.cache("ls")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SHA256", "SIZE", "LAST", "USED", "(UTC)", "IN", "USE", "URL"]
    row_a = next(line for line in lines if line.startswith(SHA_A[:12]))
    assert filled.url_a in row_a and f"{len(A)} B" in row_a and " no " in row_a
    row_b = next(line for line in lines if line.startswith(SHA_B[:12]))
    assert filled.url_b in row_b and "KiB" in row_b
    assert lines[-1].startswith("2 modules,")

    doc = json.loads(filled.cache("ls", "--json").stdout)
    by_sha = {item["sha256"]: item for item in doc}
    assert set(by_sha) == {SHA_A, SHA_B}
    assert by_sha[SHA_A]["urls"] == [filled.url_a]
    assert by_sha[SHA_A]["size"] == len(A)
    assert by_sha[SHA_A]["path"] == str(filled.module(SHA_A))
    assert by_sha[SHA_A]["in_use"] is False
    assert abs(by_sha[SHA_A]["last_used"] - time.time()) < 60


def test_ls_shows_a_module_held_by_another_process(filled: Filled, holder) -> None:
    doc = json.loads(filled.cache("ls", "--json").stdout)
    assert {d["sha256"]: d["in_use"] for d in doc} == {SHA_A: True, SHA_B: False}
    row = next(line for line in filled.cache("ls").stdout.splitlines() if filled.url_a in line)
    assert " yes " in row


def test_cache_dir_from_environment_and_before_the_action(filled: Filled) -> None:
    env = {**os.environ, "WASM_AGENT_CACHE_DIR": str(filled.dir)}
    result = wasm_agent("cache", "ls", "--json", env=env)
    assert {d["sha256"] for d in json.loads(result.stdout)} == {SHA_A, SHA_B}
    result = wasm_agent("cache", "--cache-dir", str(filled.dir), "ls", "--json")
    assert {d["sha256"] for d in json.loads(result.stdout)} == {SHA_A, SHA_B}


def test_verify_detects_and_quarantines_a_corrupt_file(filled: Filled) -> None:
    result = filled.cache("verify")
    assert result.returncode == 0, result.stderr
    assert "2 modules checked, 0 bad" in result.stdout

    path = filled.module(SHA_B)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit, same size
    path.write_bytes(bytes(data))
    result = filled.cache("verify")
    assert result.returncode == 1
    assert "2 modules checked, 1 bad" in result.stdout
    assert f"CORRUPT {path} ({filled.url_b}): content hashes to {sha256_hex(bytes(data))}" in (
        result.stderr
    )
    # moved aside, never served again: the next prefetch downloads it afresh
    assert not path.exists()
    moved = list((filled.dir / "quarantine").iterdir())
    assert len(moved) == 1 and moved[0].read_bytes() == bytes(data)
    assert f"moved to {moved[0]}" in result.stderr
    assert {d["sha256"] for d in json.loads(filled.cache("ls", "--json").stdout)} == {SHA_A}
    again = wasm_agent("prefetch", "--cache-dir", str(filled.dir), filled.url_b)
    assert again.returncode == 0, again.stderr
    assert filled.server.count("/b.wasm") == 2
    assert path.read_bytes() == B
    assert filled.cache("verify").returncode == 0


def test_verify_no_quarantine_only_reports_and_json(filled: Filled) -> None:
    path = filled.module(SHA_A)
    path.write_bytes(A + b"\0")
    result = filled.cache("verify", "--no-quarantine", "--json")
    assert result.returncode == 1
    doc = {d["sha256"]: d for d in json.loads(result.stdout)}
    assert doc[SHA_A]["ok"] is False
    assert doc[SHA_A]["actual_sha256"] == sha256_hex(A + b"\0")
    assert doc[SHA_A]["quarantined"] is None
    assert doc[SHA_B]["ok"] is True
    assert path.exists() and not (filled.dir / "quarantine").exists()


def test_prune_removes_expired_keeps_fresh_and_dry_run_changes_nothing(filled: Filled) -> None:
    age(filled.module(SHA_B), 2 * 86400)  # older than the default 24h expiry
    result = filled.cache("prune", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would remove {SHA_B[:12]}" in result.stdout
    assert filled.module(SHA_B).exists()

    result = filled.cache("prune")
    assert result.returncode == 0, result.stderr
    assert f"removed {SHA_B[:12]}" in result.stdout
    assert "removed 1 module " in result.stdout
    assert not filled.module(SHA_B).exists() and filled.module(SHA_A).exists()
    index = json.loads((filled.dir / "index.json").read_text())
    assert list(index["urls"]) == [filled.url_a]  # the index forgets the pruned module


def test_prune_expiry_from_environment_and_older_than(filled: Filled) -> None:
    age(filled.module(SHA_B), 120)
    env = {**os.environ, "WASM_MODULE_EXPIRY": "1m"}
    result = filled.cache("prune", "--json", env=env)
    doc = json.loads(result.stdout)
    assert doc["expiry_seconds"] == 60 and [d["sha256"] for d in doc["removed"]] == [SHA_B]
    age(filled.module(SHA_A), 120)
    result = filled.cache("prune", "--older-than", "1h", "--json")
    assert json.loads(result.stdout)["removed"] == []
    assert filled.module(SHA_A).exists()


def test_prune_never_removes_a_module_in_use(filled: Filled, holder) -> None:
    age(filled.module(SHA_A), 3 * 86400)
    result = filled.cache("prune", "--all-unused")
    assert result.returncode == 0, result.stderr
    assert f"kept (in use) {SHA_A[:12]}  {filled.url_a}" in result.stdout
    assert f"removed {SHA_B[:12]}" in result.stdout
    assert filled.module(SHA_A).exists() and not filled.module(SHA_B).exists()
    dry = json.loads(filled.cache("prune", "--all-unused", "--dry-run", "--json").stdout)
    assert dry["removed"] == [] and [d["sha256"] for d in dry["kept_in_use"]] == [SHA_A]

    holder.stdin.close()  # the holder exits: its lock goes with it
    holder.wait(10)
    result = filled.cache("prune", "--all-unused")
    assert f"removed {SHA_A[:12]}" in result.stdout
    assert not filled.module(SHA_A).exists()


def test_missing_cache_dir_is_empty_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    for action in ("ls", "verify", "prune"):
        result = wasm_agent("cache", action, "--cache-dir", str(missing))
        assert result.returncode == 0, result.stderr
    assert "no modules in" in wasm_agent("cache", "ls", "--cache-dir", str(missing)).stdout
    assert not missing.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "required: ACTION"),
        (("prune", "--older-than", "soon"), "--older-than: invalid value 'soon'"),
        (("prune", "--older-than", "1h", "--all-unused"), "not allowed with argument"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = wasm_agent("cache", *args)
    assert result.returncode == 2
    assert message in result.stderr
