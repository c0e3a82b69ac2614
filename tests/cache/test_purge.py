"""Expiry and purge: expired unused modules go; modules held here or elsewhere never do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.cache.helpers import REPO
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.cache import ModuleCache, ModuleGone, ModuleRequest
from wasm_agent.core.settings import CacheSettings, FetchSettings

DAY = 24 * 3600.0


async def _cached(cache: ModuleCache, tmp_path: Path, seed: int):
    source = tmp_path / f"m{seed}.wasm"
    source.write_bytes(padded_module(300, seed=seed))
    return await cache.get(ModuleRequest(url=str(source)))


async def test_purges_only_expired_unheld_modules(cache: ModuleCache, tmp_path: Path) -> None:
    old, held, fresh = [await _cached(cache, tmp_path, seed) for seed in (1, 2, 3)]
    now = time.time()
    for module in (old, held):
        os.utime(module.path, (now - 2 * DAY, now - 2 * DAY))
    cache.hold("listener-1", [held])
    removed = cache.purge(now=now)
    assert removed == [old.path]
    assert not old.path.exists() and held.path.exists() and fresh.path.exists()
    assert {e.sha256: e.in_use for e in cache.entries()} == {held.sha256: True, fresh.sha256: False}
    assert old.url not in cache.index.load().urls  # its URL record went with it
    cache.release("listener-1")
    assert cache.purge(now=now) == [held.path]
    assert [e.sha256 for e in cache.entries()] == [fresh.sha256]


async def test_hold_replaces_previous_set_and_refuses_gone_modules(
    cache: ModuleCache, tmp_path: Path
) -> None:
    one, two = await _cached(cache, tmp_path, 1), await _cached(cache, tmp_path, 2)
    cache.hold("owner", [one])
    cache.hold("owner", [two])  # the config changed: only two is in use now
    assert {e.sha256: e.in_use for e in cache.entries()} == {one.sha256: False, two.sha256: True}
    one.path.unlink()
    try:
        cache.hold("other", [two, one])
    except ModuleGone as error:
        assert one.path.name in str(error)
    else:
        raise AssertionError("holding a removed module must fail")


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


async def test_module_held_by_another_process_is_never_purged(
    cache: ModuleCache, tmp_path: Path
) -> None:
    module = await _cached(cache, tmp_path, 5)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache.layout.root), module.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        later = time.time() + 10 * DAY  # expired by any measure
        assert cache.purge(now=later) == []
        assert module.path.exists()
        assert cache.entries()[0].in_use
        holder.kill()  # a crashed holder's locks vanish with it
        holder.wait(10)
        assert cache.purge(now=later) == [module.path]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


async def test_entries_list_urls_sizes_and_use(cache: ModuleCache, tmp_path: Path) -> None:
    module = await _cached(cache, tmp_path, 9)
    [entry] = cache.entries()
    assert (entry.sha256, entry.path, entry.size, entry.in_use) == (
        sha256_hex(module.path.read_bytes()),
        module.path,
        module.size,
        False,
    )
    assert entry.url == module.url and entry.last_used <= time.time()


async def test_purge_periodically_uses_the_interval(tmp_path: Path) -> None:
    settings = CacheSettings(directory=tmp_path / "c", module_expiry=0.0, purge_interval=0.05)
    cache = ModuleCache(settings, FetchSettings())
    module = await _cached(cache, tmp_path, 4)
    os.utime(module.path, (time.time() - 1, time.time() - 1))
    task = asyncio.create_task(cache.purge_periodically())
    for _ in range(100):
        if not module.path.exists():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert not module.path.exists()


async def test_a_fifo_or_link_planted_under_a_module_name_is_skipped(
    cache: ModuleCache, tmp_path: Path
) -> None:
    """Purge neither waits on a FIFO nor follows a link planted under an expired module name."""
    modules = cache.layout.modules
    modules.mkdir(parents=True, exist_ok=True)
    fifo, link = modules / f"{'c' * 64}.wasm", modules / f"{'d' * 64}.wasm"
    os.mkfifo(fifo)
    outside = tmp_path / "precious"
    outside.write_bytes(b"keep")
    link.symlink_to(outside)
    old = await _cached(cache, tmp_path, 7)
    now = time.time()
    for path in (fifo, link, old.path):
        os.utime(path, (now - 2 * DAY, now - 2 * DAY), follow_symlinks=False)
    removed = await asyncio.wait_for(asyncio.to_thread(cache.purge, now=now), 30)
    assert removed == [old.path]
    assert fifo.exists() and link.is_symlink() and outside.read_bytes() == b"keep"
