"""A cache hit is the module the config pins, whatever was done to the cache directory.

The exploit (issue 12): with modules A and B cached, editing ``index.json`` so A's pinned
sha256 maps to B's file, or overwriting ``modules/<A>.wasm`` with B's bytes, made the proxy hand
Envoy B and ``cache verify`` report nothing. Every case here tampers with a real cache filled
from a real HTTP server and checks what must hold: the module handed out hashes to what the
config pins (or what an authenticated index entry recorded), ``cache verify`` names every
mismatch and exits 1, and an unsafe cache directory is refused with a clear error.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    Agent,
    FakeEnvoy,
    assert_never_forwarded,
    extension,
    push,
    wait_nack,
)
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.cache import ModuleCache, ModuleRequest
from wasm_agent.cache.integrity import InsecureCache, Prover
from wasm_agent.core.settings import CacheSettings, FetchSettings

ROOT = Path(__file__).resolve().parents[2]
A = padded_module(4096, seed=1)
B = padded_module(4096, seed=2)
SHA_A, SHA_B = sha256_hex(A), sha256_hex(B)


async def two_modules(cache: ModuleCache, server: ModServer) -> tuple[str, str]:
    """A and B fetched into the cache (pinned); their URLs."""
    url_a, url_b = server.serve("/a.wasm", A), server.serve("/b.wasm", B)
    assert (await cache.get(ModuleRequest(url=url_a, sha256=SHA_A))).sha256 == SHA_A
    assert (await cache.get(ModuleRequest(url=url_b, sha256=SHA_B))).sha256 == SHA_B
    return url_a, url_b


def edit_index(cache_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite ``index.json`` as an attacker with write access would (no key)."""
    path = cache_dir / "index.json"
    doc = json.loads(path.read_text())
    change(doc)
    os.chmod(path, 0o644)
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o444)


def point_a_at_b(doc: dict[str, Any]) -> None:
    """The verified exploit: A's pinned checksum and A's URL both lead to B's file."""
    doc["digests"][SHA_A] = SHA_B
    for record in doc["urls"].values():
        if record["sha256"] == SHA_A:
            record["sha256"] = SHA_B
            record["checksum"] = SHA_B


def overwrite(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.chmod(path, 0o444)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "wasm_agent", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def served(found: Any) -> bytes:
    return Path(found.path).read_bytes()


async def test_forged_index_entry_never_serves_b(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: after the index edit, a request pinning A (and an unpinned request for A's
    URL) gets A's bytes; a forged entry is never believed."""
    url_a, _ = await two_modules(cache, modserver)
    edit_index(cache_dir, point_a_at_b)
    fresh = ModuleCache(CacheSettings(directory=cache_dir), cache.fetch_settings)
    pinned = await fresh.get(ModuleRequest(url=url_a, sha256=SHA_A))
    assert served(pinned) == A and pinned.sha256 == SHA_A
    unpinned = await fresh.get(ModuleRequest(url=url_a))
    assert served(unpinned) == A
    fresh.close()


async def test_overwritten_module_file_is_refetched(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: ``modules/<A>.wasm`` holding B's bytes is never handed out; the next request
    downloads A again and replaces the file, even in the process that proved it before."""
    url_a, _ = await two_modules(cache, modserver)
    assert (await cache.get(ModuleRequest(url=url_a, sha256=SHA_A))).hit  # proof remembered
    overwrite(cache_dir / "modules" / f"{SHA_A}.wasm", B)
    again = await cache.get(ModuleRequest(url=url_a, sha256=SHA_A))
    assert not again.hit and served(again) == A
    assert modserver.count("/a.wasm") == 2


async def test_same_size_rewrite_after_proof_is_caught(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: a remembered proof dies with any write (same size, mtime set back): the
    ctime moves, and the file is hashed again."""
    url_a, _ = await two_modules(cache, modserver)
    path = cache_dir / "modules" / f"{SHA_A}.wasm"
    before = path.stat()
    overwrite(path, B)  # same length as A
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.lookup(ModuleRequest(url=url_a, sha256=SHA_A)) is None


async def test_symlink_out_of_the_cache_is_not_followed(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer, tmp_path: Path
) -> None:
    """Must hold: a module file replaced by a symlink (even to a file holding the right
    bytes) is not served; the module is fetched again into a real file."""
    url_a, _ = await two_modules(cache, modserver)
    outside = tmp_path / "outside.wasm"
    outside.write_bytes(A)
    path = cache_dir / "modules" / f"{SHA_A}.wasm"
    path.unlink()
    path.symlink_to(outside)
    found = await cache.get(ModuleRequest(url=url_a, sha256=SHA_A))
    assert not found.hit and not Path(found.path).is_symlink() and served(found) == A
    assert Prover().prove(path, SHA_A) is not None


async def test_modes_of_what_the_cache_writes(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: module files and the index are 0444, the key 0600, directories 0700."""
    await two_modules(cache, modserver)
    for path in (cache_dir / "modules").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
    assert stat.S_IMODE((cache_dir / "index.json").stat().st_mode) == 0o444
    assert stat.S_IMODE((cache_dir / "index.key").stat().st_mode) == 0o600
    for directory in (cache_dir, cache_dir / "modules"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("target", ["root", "modules", "index"])
async def test_cache_writable_by_others_is_refused(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer, target: str
) -> None:
    """Must hold: a cache directory or index that other users may write is refused with an
    error naming the path and the fix, in the library and in ``prefetch`` (exit 1)."""
    url_a, _ = await two_modules(cache, modserver)
    path = {"root": cache_dir, "modules": cache_dir / "modules", "index": cache_dir / "index.json"}
    os.chmod(path[target], stat.S_IMODE(path[target].stat().st_mode) | 0o022)
    fresh = ModuleCache(CacheSettings(directory=cache_dir), FetchSettings())
    with pytest.raises(InsecureCache, match="writable by other users"):
        fresh.lookup(ModuleRequest(url=url_a, sha256=SHA_A))
    result = cli("prefetch", "--cache-dir", str(cache_dir), "--sha256", SHA_A, url_a)
    assert result.returncode == 1, result.stderr
    assert f"{path[target]} is writable by other users" in result.stderr


async def test_cache_verify_reports_every_mismatch(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: ``cache verify`` names the forged index entries and the overwritten file
    and exits 1 (it said "2 modules checked, 0 bad" before)."""
    await two_modules(cache, modserver)
    edit_index(cache_dir, point_a_at_b)
    result = cli("cache", "verify", "--cache-dir", str(cache_dir), "--no-quarantine")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "index entry" in result.stderr and SHA_A in result.stderr
    overwrite(cache_dir / "modules" / f"{SHA_A}.wasm", B)
    result = cli("cache", "verify", "--cache-dir", str(cache_dir), "--json", "--no-quarantine")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    bad = [m for m in doc if m["kind"] == "module" and not m["ok"]]
    assert [m["sha256"] for m in bad] == [SHA_A] and bad[0]["actual_sha256"] == SHA_B
    assert [m for m in doc if m["kind"] == "index" and not m["ok"]], doc


@pytest.mark.timeout(90)
async def test_proxy_hands_envoy_a_after_the_index_edit(
    cache: ModuleCache,
    workdir: Path,
    modserver: ModServer,
    istiod: FakeIstiod,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The exploit as reported, through ``wasm-agent proxy``: with the index edited and A's
    file overwritten with B, an ECDS config pinning A reaches Envoy naming a file that holds A
    (the agent downloads A again), never B."""
    cache_dir = workdir / "cache"
    mine = ModuleCache(CacheSettings(directory=cache_dir), cache.fetch_settings)
    url_a, _ = await two_modules(mine, modserver)
    mine.close()
    edit_index(cache_dir, point_a_at_b)
    make_agent(cache_dir=cache_dir)
    envoy = fake_envoy()
    push(istiod, extension(url_a, SHA_A), "v1")
    envoy.wait_version("v1")
    assert_never_forwarded(envoy, allowed={SHA_A})
    overwrite(cache_dir / "modules" / f"{SHA_A}.wasm", B)
    push(istiod, extension(url_a, SHA_A), "v2")
    envoy.wait_version("v2")
    seen = assert_never_forwarded(envoy, allowed={SHA_A})
    assert seen and all(s.content_sha256 == SHA_A for s in seen)


@pytest.mark.timeout(90)
def test_proxy_refuses_a_cache_others_may_write(
    workdir: Path,
    modserver: ModServer,
    istiod: FakeIstiod,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """Must hold: ``wasm-agent proxy`` on a world-writable cache directory forwards no module:
    the ECDS config is NACKed upstream with the refusal (path, reason, fix), and nothing is
    stored there."""
    cache_dir = workdir / "cache"
    cache_dir.mkdir()
    os.chmod(cache_dir, 0o777)
    url = modserver.serve("/a.wasm", A)
    agent = make_agent(cache_dir=cache_dir)
    envoy = fake_envoy()
    nonces = push(istiod, extension(url, SHA_A), "v1")
    nack = wait_nack(istiod, nonces, agent=agent)
    assert f"{cache_dir} is writable by other users" in nack.error_detail.message
    assert "v1" not in envoy.versions() and modserver.count("/a.wasm") == 0
    assert os.listdir(cache_dir) == []


@pytest.mark.registry
async def test_forged_oci_digest_entry_is_ignored(
    cache_dir: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    """Must hold: with OCI modules A and B cached (real docker-registry), an index edit
    mapping A's manifest digest to B's module file is ignored: a request pinning A's digest
    gets A's bytes (fetched again), and a file named by the manifest digest itself is never
    served."""
    settings = FetchSettings(insecure_registries=frozenset({oci_registry.host}))
    cache = ModuleCache(CacheSettings(directory=cache_dir), settings)
    repo = unique_repo("integrity")
    pushed_a = oci_pusher.push_wasm_artifact(repo, "a", A)
    pushed_b = oci_pusher.push_wasm_artifact(repo, "b", B)
    url_a = oci_registry.oci_url(repo, digest=pushed_a.digest)
    assert served(await cache.get(ModuleRequest(url=url_a))) == A
    await cache.get(ModuleRequest(url=oci_registry.oci_url(repo, digest=pushed_b.digest)))
    cache.close()
    digest_a = pushed_a.digest.removeprefix("sha256:")
    edit_index(cache_dir, lambda doc: doc["digests"].__setitem__(digest_a, SHA_B))
    planted = cache_dir / "modules" / f"{digest_a}.wasm"  # hashes to its name: the manifest
    planted.write_bytes(pushed_a.manifest)
    fresh = ModuleCache(CacheSettings(directory=cache_dir), settings)
    found = await fresh.get(ModuleRequest(url=url_a))
    assert served(found) == A and found.sha256 == SHA_A
    fresh.close()


async def test_no_symlink_inside_the_cache_is_followed(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer, tmp_path: Path
) -> None:
    """Must hold: a planted lock-file symlink is replaced by a lock file of the download's own
    (review 4: it used to fail that module's downloads for good) and its target is left alone;
    a module "file" that is a symlink is skipped by purge, reported and moved aside by
    ``cache verify``, and its target is never read or changed."""
    await two_modules(cache, modserver)
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    lock = cache.layout.lock_path(modserver.url("/c.wasm"))
    lock.symlink_to(outside)
    modserver.serve("/c.wasm", A)
    assert (await cache.get(ModuleRequest(url=modserver.url("/c.wasm")))).sha256 == SHA_A
    assert lock.is_file() and not lock.is_symlink() and outside.read_bytes() == b"keep me"
    link = cache_dir / "modules" / f"{'e' * 64}.wasm"
    link.symlink_to(outside)
    os.utime(cache_dir / "modules" / f"{SHA_A}.wasm", (0, 0))  # expired: purge looks at all
    cache.purge()
    assert link.is_symlink() and outside.read_bytes() == b"keep me"
    result = cli("cache", "verify", "--cache-dir", str(cache_dir))
    assert result.returncode == 1 and f"CORRUPT {link}" in result.stderr, result.stderr
    assert "is a symlink" in result.stderr and not link.exists()
    assert outside.read_bytes() == b"keep me"


async def test_a_fifo_as_the_index_key_is_refused_without_waiting(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: a FIFO planted as ``index.key`` (opening it to read would wait for a writer
    forever) is refused at once with an error naming it."""
    url_a, _ = await two_modules(cache, modserver)
    key = cache_dir / "index.key"
    key.unlink()
    os.mkfifo(key, 0o600)
    fresh = ModuleCache(CacheSettings(directory=cache_dir), FetchSettings())
    with pytest.raises(InsecureCache, match=r"index\.key is not a regular file"):
        fresh.lookup(ModuleRequest(url=url_a, sha256=SHA_A))
