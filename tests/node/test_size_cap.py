"""The cache size cap with the node service (``wasm-agent node --cache-max-bytes``): a module
placed in a pod's view is never evicted while the view exists; NodeUnpublishVolume releases it,
so the next module evicts it. The node service runs as a real process, kubelet's CSI calls go
over its real socket, modules come from a real HTTP server and compile in the real worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.harness import ROOT, Kubelet, NodeProcess, Pod
from tests.support.modserver import ModServer
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.fetch.errors import FetchError
from wasm_agent.node.client import NodeModuleSource

SIZE = 20_000  # each module; the cap below fits one (with room to spare), never two
CAP = SIZE * 3 // 2


@pytest.fixture
def modserver() -> Iterator[ModServer]:
    with ModServer() as server:
        yield server


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when the sample is absent)."""
    label = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    name = f"istio_agent_{name}"
    sample = f"{name}{{{label}}}" if label else name
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def published(kubelet: Kubelet, name: str) -> Pod:
    pod = kubelet.pod(name)
    kubelet.publish(pod)
    return pod


async def test_unpublish_releases_holds_so_the_size_cap_may_evict(
    tmp_path: Path, modserver: ModServer
) -> None:
    a, b = padded_module(SIZE, seed=61), padded_module(SIZE, seed=62)
    url_a, url_b = modserver.serve("/a.wasm", a), modserver.serve("/b.wasm", b)
    cached_a = tmp_path / "node" / "cache" / "modules" / f"{sha256_hex(a)}.wasm"
    cached_b = cached_a.with_name(f"{sha256_hex(b)}.wasm")
    # back-off 0: B's refusal is not remembered, so B may be fetched again right after unpublish
    env = {"WASM_AGENT_FETCH_BACKOFF": "0"}
    node = NodeProcess(tmp_path / "node", "--cache-max-bytes", str(CAP), env=env).start()
    try:
        with Kubelet(node) as kubelet:
            first, second = published(kubelet, "a"), published(kubelet, "b")
            got = await NodeModuleSource(first.socket).get(ModuleRequest(url=url_a, timeout=20))
            assert got.path == first.target / "modules" / cached_a.name
            assert got.path.read_bytes() == a
            before = node.metrics()
            assert 0 < metric(before, "wasm_cache_bytes") <= CAP
            # A is the least recently used module, but the first view holds it: B cannot fit
            with pytest.raises(FetchError) as refused:
                await NodeModuleSource(second.socket).get(ModuleRequest(url=url_b, timeout=20))
            message = str(refused.value)
            assert f"cannot fit a module of {len(b)} bytes" in message, message
            assert f"{CAP}-byte cap" in message and "--cache-max-bytes" in message
            assert cached_a.read_bytes() == a and got.path.read_bytes() == a
            assert not cached_b.exists() and list((second.target / "modules").iterdir()) == []
            assert not list(cached_a.parent.glob(".tmp-*"))  # nothing partial left
            full = node.metrics()
            assert metric(full, "wasm_cache_eviction_count", kind="module") == 0
            assert metric(full, "wasm_node_module_requests", result="fetch_failed") == 1
            kubelet.unpublish(first)  # the pod is gone: its view and its hold go
            assert not first.target.exists()
            got_b = await NodeModuleSource(second.socket).get(ModuleRequest(url=url_b, timeout=20))
            assert got_b.path == second.target / "modules" / cached_b.name
            assert got_b.path.read_bytes() == b and cached_b.read_bytes() == b
            assert not cached_a.exists()  # evicted: no view holds it any more
            after = node.metrics()
            assert metric(after, "wasm_cache_eviction_count", kind="module") == 1
            assert len(b) <= metric(after, "wasm_cache_bytes") <= CAP
            assert modserver.count("/a.wasm") == 1 and modserver.count("/b.wasm") == 2
    finally:
        node.cleanup()


async def test_the_variable_sets_the_cap(tmp_path: Path, modserver: ModServer) -> None:
    url = modserver.serve("/big.wasm", padded_module(SIZE, seed=63))
    cap = SIZE // 2
    env = {"WASM_AGENT_CACHE_MAX_BYTES": str(cap)}
    node = NodeProcess(tmp_path / "node", env=env).start()
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "a")
            with pytest.raises(FetchError, match=f"larger than the cache size cap of {cap} bytes"):
                await NodeModuleSource(pod.socket).get(ModuleRequest(url=url, timeout=20))
    finally:
        node.cleanup()


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--cache-max-bytes", "lots"], {}), ([], {"WASM_AGENT_CACHE_MAX_BYTES": "lots"})],
)
def test_a_bad_cap_is_a_usage_error(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wasm_agent", "node", "--csi-endpoint",
         f"unix:{tmp_path / 'csi.sock'}", "--cache-dir", str(tmp_path / "cache"), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert ("--cache-max-bytes" if args else "WASM_AGENT_CACHE_MAX_BYTES") in result.stderr
    assert not (tmp_path / "csi.sock").exists()
