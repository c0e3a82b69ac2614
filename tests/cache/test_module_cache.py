"""ModuleCache against real servers: fetch once, verify, compile, store, hit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.oci_push import RawPusher
from tests.support.registry import Registry
from tests.support.wasm import minimal_module, padded_module, sha256_hex
from wasm_agent.cache import ModuleCache, ModuleRequest, PullPolicy
from wasm_agent.core.metrics import REGISTRY
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.fetch.errors import ChecksumMismatch, DownloadFailure, InvalidModule

BAD_WASM = b"\0asm\x01\0\0\0\x01\x05garbage"


def lookups(hit: str) -> float:
    return REGISTRY._metrics["istio_agent_wasm_cache_lookup_count"].value(hit=hit)


async def test_fetches_once_then_hits(cache: ModuleCache, modserver: ModServer) -> None:
    data = minimal_module()
    url = modserver.serve("/m.wasm", data)
    hits, misses = lookups("true"), lookups("false")
    first = await cache.get(ModuleRequest(url=url))
    second = await cache.get(ModuleRequest(url=url))
    third = await cache.get(ModuleRequest(url=url, sha256=sha256_hex(data)))
    assert modserver.count("/m.wasm") == 1
    assert (first.hit, second.hit, third.hit) == (False, True, True)
    assert first.path == second.path == third.path == cache_path(cache, data)
    assert first.path.read_bytes() == data and first.size == len(data)
    assert (lookups("true") - hits, lookups("false") - misses) == (2, 1)
    assert REGISTRY._metrics["istio_agent_wasm_cache_entries"].value() == 1


def cache_path(cache: ModuleCache, data: bytes) -> Path:
    return cache.layout.modules / f"{sha256_hex(data)}.wasm"


async def test_layout_and_permissions(cache: ModuleCache, modserver: ModServer) -> None:
    module = await cache.get(ModuleRequest(url=modserver.serve("/m.wasm", minimal_module())))
    root = cache.layout.root
    for directory in (root, root / "modules", root / "locks", root / "compiled"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(module.path.stat().st_mode) == 0o444
    assert module.path.parent == root / "modules"
    assert [p.name for p in (root / "modules").iterdir()] == [module.path.name]
    index = json.loads((root / "index.json").read_text())
    assert index["urls"][module.url]["sha256"] == module.sha256


async def test_checksum_mismatch_is_not_cached(cache: ModuleCache, modserver: ModServer) -> None:
    url = modserver.serve("/m.wasm", minimal_module())
    with pytest.raises(ChecksumMismatch, match="0" * 64):
        await cache.get(ModuleRequest(url=url, sha256="0" * 64))
    assert list(cache.layout.modules.iterdir()) == []
    assert cache.entries() == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (BAD_WASM, "invalid Wasm module: invalid leading byte"),
        (b"<html>not found</html>", "not a Wasm binary"),
    ],
)
async def test_module_failing_a_check_is_not_cached(
    cache: ModuleCache, modserver: ModServer, data: bytes, message: str
) -> None:
    url = modserver.serve("/bad.wasm", data)
    with pytest.raises(InvalidModule, match=message) as caught:
        await cache.get(ModuleRequest(url=url))
    assert caught.value.url == url
    assert list(cache.layout.modules.iterdir()) == []
    assert cache.index.load().urls == {}


async def test_download_failure_leaves_nothing(cache: ModuleCache, modserver: ModServer) -> None:
    url = modserver.url("/missing.wasm")
    with pytest.raises(DownloadFailure):
        await cache.get(ModuleRequest(url=url))
    assert list(cache.layout.modules.iterdir()) == []


async def test_always_repulls_on_new_resource_version(
    cache: ModuleCache, modserver: ModServer
) -> None:
    one, two = padded_module(200, seed=1), padded_module(200, seed=2)
    url = modserver.serve("/m.wasm", one)

    def request(version: str) -> ModuleRequest:
        return ModuleRequest(
            url=url, pull_policy=PullPolicy.ALWAYS, resource_name="ns/p", resource_version=version
        )

    assert (await cache.get(request("1"))).sha256 == sha256_hex(one)
    modserver.serve("/m.wasm", two)
    assert (await cache.get(request("1"))).sha256 == sha256_hex(one)  # same version: cached
    fresh = await cache.get(request("2"))
    assert (fresh.sha256, fresh.hit) == (sha256_hex(two), False)
    assert modserver.count("/m.wasm") == 2
    # IfNotPresent uses what is remembered for the URL, whatever the version
    same = await cache.get(
        ModuleRequest(url=url, pull_policy=PullPolicy.IF_NOT_PRESENT, resource_version="3")
    )
    assert (same.sha256, same.hit) == (sha256_hex(two), True)


async def test_oci_pull_then_digest_url_hits_without_network(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    data = padded_module(1000, seed=7)
    pushed = oci_pusher.push_wasm_artifact("cache/digest", "v1", data)
    settings = FetchSettings(insecure_registries=frozenset({oci_registry.host}))
    cache = ModuleCache(CacheSettings(directory=tmp_path / "c"), settings)
    tagged = await cache.get(ModuleRequest(url=oci_registry.oci_url("cache/digest", "v1")))
    assert tagged.sha256 == sha256_hex(data) and not tagged.hit
    # the manifest digest names the module now, with the registry gone from the picture
    offline = ModuleCache(
        CacheSettings(directory=tmp_path / "c"),
        FetchSettings(insecure_registries=frozenset({"127.0.0.1:1"})),
    )
    pinned = offline.lookup(ModuleRequest(url=f"oci://127.0.0.1:1/cache/digest@{pushed.digest}"))
    assert pinned is not None and pinned.path == tagged.path
    by_checksum = offline.lookup(
        ModuleRequest(url="oci://127.0.0.1:1/cache/digest:v1", sha256=pushed.hex)
    )
    assert by_checksum is not None and by_checksum.sha256 == sha256_hex(data)


async def test_file_urls_and_paths(cache: ModuleCache, tmp_path: Path) -> None:
    data = minimal_module()
    path = tmp_path / "m.wasm"
    path.write_bytes(data)
    module = await cache.get(ModuleRequest(url=str(path), sha256=sha256_hex(data)))
    assert module.url == path.as_uri() and module.path.read_bytes() == data
    again = await cache.get(ModuleRequest(url=path.as_uri()))
    assert again.hit and again.path == module.path


async def test_unwritable_cache_dir_is_a_clear_error(
    tmp_path: Path, modserver: ModServer, fetch_settings: FetchSettings
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = ModuleCache(CacheSettings(directory=blocker / "cache"), fetch_settings)
    from wasm_agent.cache.errors import CacheWriteError

    with pytest.raises(CacheWriteError, match=r"cannot create cache directory .*Not a directory"):
        await cache.get(ModuleRequest(url=modserver.serve("/m.wasm", minimal_module())))
    assert modserver.count("/m.wasm") == 0
    assert os.listdir(tmp_path) == ["file"]


async def test_cache_dir_removed_while_running_is_recreated(
    cache: ModuleCache, modserver: ModServer
) -> None:
    import shutil

    first = await cache.get(ModuleRequest(url=modserver.serve("/a.wasm", minimal_module())))
    shutil.rmtree(cache.layout.root)
    second = await cache.get(ModuleRequest(url=modserver.serve("/b.wasm", padded_module(99))))
    assert second.path.is_file() and not first.path.exists()
    assert stat.S_IMODE(cache.layout.modules.stat().st_mode) == 0o700
