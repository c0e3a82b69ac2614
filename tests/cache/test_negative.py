"""The negative cache through the module cache, against a real HTTP module server that counts
requests: a failed module is refused at once with its reason until the back-off ends; a changed
URL, sha256 or pull secret is fetched; local cache faults are not remembered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.cache import ModuleCache, ModuleRequest
from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.negative import NEGATIVE_HITS, NegativeCache, failure_key, remembered
from wasm_agent.cache.size_cap import CacheFull
from wasm_agent.core import config
from wasm_agent.core.settings import CacheSettings, FetchSettings, cache_settings_from_env
from wasm_agent.fetch.errors import ChecksumMismatch, DownloadFailure, RetriesExhausted

MODULE = padded_module(500, seed=7)


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(cache_dir: Path, backoff: float = 10.0) -> tuple[ModuleCache, Clock]:
    fetch = FetchSettings(http_max_retries=1, default_fetch_timeout=30.0)
    cache = ModuleCache(CacheSettings(cache_dir, fetch_backoff=backoff), fetch)
    clock = Clock()
    cache.negative = NegativeCache(backoff, clock=clock)
    return cache, clock


async def test_a_failed_module_is_refused_until_the_backoff_ends(
    cache_dir: Path, modserver: ModServer
) -> None:
    url = modserver.fail("/gone.wasm", 404)
    cache, clock = _cache(cache_dir)
    request = ModuleRequest(url=url, sha256=sha256_hex(MODULE))
    with pytest.raises(DownloadFailure) as first:
        await cache.get(request)
    hits = NEGATIVE_HITS.value()
    for _ in range(5):
        with pytest.raises(DownloadFailure) as again:  # the same class (and metric result)
            await cache.get(request)
        assert str(again.value).startswith(str(first.value))
        assert "not fetched again for another 10.0s (--fetch-backoff)" in str(again.value)
    assert modserver.count("/gone.wasm") == 1
    assert NEGATIVE_HITS.value() - hits == 5
    clock.now += 10.0  # the back-off ends: fetched again (and it works now)
    modserver.serve("/gone.wasm", MODULE)
    module = await cache.get(request)
    assert module.sha256 == sha256_hex(MODULE) and modserver.count("/gone.wasm") == 2
    cache.close()


async def test_a_changed_url_sha256_or_pull_secret_is_fetched(
    cache_dir: Path, modserver: ModServer
) -> None:
    url = modserver.serve("/m.wasm", MODULE)
    cache, _ = _cache(cache_dir)
    wrong = ModuleRequest(url=url, sha256="ab" * 32, pull_secret=b"secret-one")
    for _ in range(3):
        with pytest.raises(ChecksumMismatch):
            await cache.get(wrong)
    assert modserver.count("/m.wasm") == 1
    other_secret = ModuleRequest(url=url, sha256="ab" * 32, pull_secret=b"secret-two")
    with pytest.raises(ChecksumMismatch):
        await cache.get(other_secret)
    assert modserver.count("/m.wasm") == 2
    no_secret = ModuleRequest(url=url, sha256="ab" * 32)
    with pytest.raises(ChecksumMismatch):
        await cache.get(no_secret)
    assert modserver.count("/m.wasm") == 3
    right = await cache.get(ModuleRequest(url=url, sha256=sha256_hex(MODULE)))
    assert right.sha256 == sha256_hex(MODULE) and modserver.count("/m.wasm") == 4
    other_url = modserver.fail("/other.wasm", 500)
    with pytest.raises(DownloadFailure):
        await cache.get(ModuleRequest(url=other_url, sha256="ab" * 32))
    assert modserver.count("/other.wasm") == 1
    cache.close()


async def test_concurrent_requests_of_one_bad_module_fetch_once(
    cache_dir: Path, modserver: ModServer
) -> None:
    url = modserver.slow("/slow-bad.wasm", b"not wasm at all" * 100, chunk=200, delay=0.02)
    cache, _ = _cache(cache_dir)
    request = ModuleRequest(url=url)
    outcomes = await asyncio.gather(*(cache.get(request) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(o, Exception) for o in outcomes), outcomes
    assert modserver.count("/slow-bad.wasm") == 1
    cache.close()


async def test_backoff_zero_turns_it_off(cache_dir: Path, modserver: ModServer) -> None:
    url = modserver.fail("/off.wasm", 404)
    cache, _ = _cache(cache_dir, backoff=0.0)
    for _ in range(3):
        with pytest.raises(DownloadFailure):
            await cache.get(ModuleRequest(url=url))
    assert modserver.count("/off.wasm") == 3
    cache.close()


def test_key_hashes_the_secret_and_local_faults_are_not_remembered() -> None:
    request = ModuleRequest(url="oci://r.test/a:v1", pull_secret=b"hunter2-password")
    key = failure_key("oci://r.test/a:v1", request)
    assert "hunter2" not in key and len(key) == 64
    assert remembered(CacheFull("u", "too big"))
    assert not remembered(CacheWriteError("u", "disk full"))
    assert remembered(RetriesExhausted("u", DownloadFailure("u", "503"), 3))
    assert not remembered(ValueError("x"))


def test_the_variable_and_its_default() -> None:
    assert cache_settings_from_env(None, {}).fetch_backoff == 10.0
    env = {"WASM_AGENT_FETCH_BACKOFF": "1m30s", "WASM_AGENT_CACHE_MAX_BYTES": "64Mi"}
    settings = cache_settings_from_env(None, env)
    assert (settings.fetch_backoff, settings.max_bytes) == (90.0, 64 * 1024**2)
    assert cache_settings_from_env(None, {"WASM_AGENT_FETCH_BACKOFF": "0"}).fetch_backoff == 0
    with pytest.raises(config.ConfigError, match="WASM_AGENT_FETCH_BACKOFF"):
        cache_settings_from_env(None, {"WASM_AGENT_FETCH_BACKOFF": "soon"})
