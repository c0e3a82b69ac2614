"""The size cap (``--cache-max-bytes``): LRU eviction of modules no process holds, compiled
artifacts counted and evicted too, a clear fetch error for a module that cannot fit. Modules are
compiled by the real wasmtime worker; holders are real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache.helpers import REPO, run_prefetch
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.cache import CachedModule, ModuleCache, ModuleRequest
from wasm_agent.cache.layout import CacheLayout
from wasm_agent.cache.size_cap import CACHE_BYTES, CACHE_EVICTIONS, CacheFull, scan
from wasm_agent.core.settings import CacheSettings, FetchSettings

SIZE = 20_000
HOLDER = """
import sys
from pathlib import Path
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.cache import ModuleCache, ModuleRequest
cache = ModuleCache(CacheSettings(directory=Path(sys.argv[1])), FetchSettings())
module = cache.lookup(ModuleRequest(url=sys.argv[2]))
cache.hold("config", [module])
print("held", flush=True)
sys.stdin.read()
"""


def _source(tmp_path: Path, seed: int, size: int = SIZE) -> Path:
    path = tmp_path / f"m{seed}.wasm"
    path.write_bytes(padded_module(size, seed=seed))
    return path


async def _fill(cache_dir: Path, tmp_path: Path, seeds: tuple[int, ...]) -> list[CachedModule]:
    """Cache one module per seed (no cap), the first one least recently used."""
    cache = ModuleCache(CacheSettings(cache_dir), FetchSettings())
    modules = [await cache.get(ModuleRequest(url=str(_source(tmp_path, s)))) for s in seeds]
    cache.close()
    now = time.time()
    for age, module in enumerate(reversed(modules), start=1):
        os.utime(module.path, (now - 100 * age, now - 100 * age))
    return modules


def _capped(cache_dir: Path, max_bytes: int) -> ModuleCache:
    return ModuleCache(CacheSettings(cache_dir, max_bytes=max_bytes), FetchSettings())


@pytest.fixture
def holder_of(cache_dir: Path) -> Iterator:
    """Start a real process holding a module (as a proxy does for Envoy) until the test ends."""
    started: list[subprocess.Popen[str]] = []

    def start(module: CachedModule) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(cache_dir), module.url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


async def test_the_least_recently_used_module_is_evicted(cache_dir: Path, tmp_path: Path) -> None:
    old, middle, recent = await _fill(cache_dir, tmp_path, (1, 2, 3))
    total, entries = scan(CacheLayout(cache_dir))
    art = max(e.size for e in entries if e.kind == "compiled")
    assert art > 0 and total >= 3 * (SIZE + art) - 100  # the compiled artifacts count too
    cache = _capped(cache_dir, total + art + SIZE // 2)  # room for half a module more
    evicted = CACHE_EVICTIONS.value(kind="module")
    new = await cache.get(ModuleRequest(url=str(_source(tmp_path, 4))))
    assert not old.path.exists()
    assert middle.path.exists() and recent.path.exists() and new.path.exists()
    assert CACHE_EVICTIONS.value(kind="module") - evicted == 1
    assert old.url not in cache.index.load().urls  # its URL record went with it
    now_total, _ = scan(cache.layout)
    assert now_total <= total + art + SIZE // 2 and CACHE_BYTES.value() == now_total
    cache.close()


async def test_a_module_held_by_another_process_is_never_evicted(
    cache_dir: Path, tmp_path: Path, holder_of
) -> None:
    old, middle, recent = await _fill(cache_dir, tmp_path, (11, 12, 13))
    holder_of(old)  # a running Envoy uses the least recently used module
    total, entries = scan(CacheLayout(cache_dir))
    art = max(e.size for e in entries if e.kind == "compiled")
    cache = _capped(cache_dir, total + art + SIZE // 2)
    new = await cache.get(ModuleRequest(url=str(_source(tmp_path, 14))))
    assert old.path.exists() and not middle.path.exists()
    assert recent.path.exists() and new.path.exists()
    # every module held now (another process and this one), room for half a module beside them
    cache.hold("listener", [recent, new])
    full = _capped(cache_dir, 3 * SIZE + SIZE // 2)
    with pytest.raises(CacheFull) as caught:
        await full.get(ModuleRequest(url=str(_source(tmp_path, 15))))
    assert not [e for e in scan(cache.layout)[1] if e.kind == "compiled"]  # evicted first
    message = str(caught.value)
    assert "cannot fit a module of" in message and "--cache-max-bytes" in message
    assert "in use by running Envoys" in message
    stored = {p.name for p in cache.layout.modules.iterdir()}
    assert stored == {f"{m.sha256}.wasm" for m in (old, recent, new)}  # no temp file left
    full.close()
    cache.close()


async def test_compiled_artifacts_go_before_recently_used_modules(
    cache_dir: Path, tmp_path: Path
) -> None:
    modules = await _fill(cache_dir, tmp_path, (21, 22))
    total, entries = scan(CacheLayout(cache_dir))
    artifacts = [e for e in entries if e.kind == "compiled"]
    assert artifacts
    long_ago = time.time() - 3600
    for artifact in artifacts:  # artifacts written long ago, modules used recently
        os.utime(artifact.path, (long_ago, long_ago))
    room = sum(a.size for a in artifacts)  # just what the old artifacts take
    art = max(a.size for a in artifacts)  # the new module's artifact: about as large
    cache = _capped(cache_dir, total - room + SIZE + art + 2000)
    compiled = CACHE_EVICTIONS.value(kind="compiled")
    await cache.get(ModuleRequest(url=str(_source(tmp_path, 23))))
    assert all(m.path.exists() for m in modules)
    assert all(not a.path.exists() for a in artifacts)
    assert CACHE_EVICTIONS.value(kind="compiled") - compiled == len(artifacts)
    cache.close()


async def test_a_module_larger_than_the_cap_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    cache = _capped(cache_dir, SIZE // 2)
    with pytest.raises(CacheFull) as caught:
        await cache.get(ModuleRequest(url=str(_source(tmp_path, 31))))
    assert f"larger than the cache size cap of {SIZE // 2} bytes" in str(caught.value)
    assert not list(cache.layout.modules.iterdir())
    cache.close()


def test_prefetch_flag_and_variable(cache_dir: Path, tmp_path: Path) -> None:
    small, big = _source(tmp_path, 41), _source(tmp_path, 42, 3 * SIZE)
    refused = run_prefetch(cache_dir, str(big), "--cache-max-bytes", str(2 * SIZE))
    assert refused.returncode == 1
    assert "larger than the cache size cap" in refused.stderr
    env = {**os.environ, "WASM_AGENT_CACHE_MAX_BYTES": str(5 * SIZE // 2)}
    ok = run_prefetch(cache_dir, str(small), env=env)
    assert ok.returncode == 0, ok.stderr
    assert (cache_dir / "modules" / f"{sha256_hex(small.read_bytes())}.wasm").exists()
    # the modules of one run never evict each other: the third cannot fit instead
    more = [str(_source(tmp_path, seed)) for seed in (43, 44)]
    run = run_prefetch(cache_dir, str(small), *more, env=env)
    assert run.returncode == 1 and "cannot fit a module" in run.stderr, run.stderr
    assert (cache_dir / "modules" / f"{sha256_hex(small.read_bytes())}.wasm").exists()
    bad = run_prefetch(cache_dir, str(small), env={**os.environ, "WASM_AGENT_CACHE_MAX_BYTES": "x"})
    assert bad.returncode == 2 and "WASM_AGENT_CACHE_MAX_BYTES" in bad.stderr


async def test_a_fifo_or_link_planted_under_a_module_name_neither_blocks_nor_is_followed(
    cache_dir: Path, tmp_path: Path
) -> None:
    """A writer of the cache directory plants, under module names older than every real one, a
    FIFO (opening it to lock it would wait forever) and a link to a file outside the cache.
    Eviction skips both: the fetch completes, the link's target is untouched."""
    (old,) = await _fill(cache_dir, tmp_path, (51,))
    modules = cache_dir / "modules"
    fifo, link = modules / f"{'a' * 64}.wasm", modules / f"{'b' * 64}.wasm"
    os.mkfifo(fifo)
    outside = tmp_path / "precious"
    outside.write_bytes(b"x" * (4 * SIZE))
    link.symlink_to(outside)
    ancient = time.time() - 10 * 24 * 3600
    for path in (fifo, link):
        os.utime(path, (ancient, ancient), follow_symlinks=False)
    total, entries = scan(CacheLayout(cache_dir))
    assert {e.path for e in entries if e.kind == "module"} == {old.path}  # neither is counted
    cache = _capped(cache_dir, total + SIZE + SIZE // 2)  # room only if `old` (or more) goes
    new = await asyncio.wait_for(cache.get(ModuleRequest(url=str(_source(tmp_path, 52)))), 60)
    assert new.path.exists() and not old.path.exists()
    assert fifo.exists() and link.is_symlink() and outside.read_bytes() == b"x" * (4 * SIZE)
    cache.close()
