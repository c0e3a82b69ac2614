"""Repeated ECDS pushes of a bad module through the real proxy: NACKed at once from the negative
cache, the real ``docker-registry`` untouched (its access log counted) until the back-off ends
or the URL, sha256 or pull secret changes."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.agentproc import AgentProcess
from tests.e2e.xds_config import wasm_extension
from tests.support.istiod import FakeIstiod, FakeStream, sotw_response
from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import padded_module, sha256_hex
from tests.xds.proxy_helpers import AdsClient, start_proxy
from wasm_agent.cache import ModuleCache
from wasm_agent.cache.negative import NEGATIVE_HITS
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.xds.converter import WasmConverter
from wasm_agent.xds.types import ECDS_TYPE
from wasm_agent.xds.upstream import UpstreamSettings

pytestmark = [pytest.mark.timeout(60), pytest.mark.registry]
PULL_SECRET_ENV = "ISTIO_META_WASM_IMAGE_PULL_SECRET"


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod() as server:
        server.auto_respond = False
        yield server


class Pushes:
    """One proxy (cache with ``backoff``) and one Envoy-like stream; push and await NACKs."""

    def __init__(
        self, istiod: FakeIstiod, stream: FakeStream, ads: AdsClient, registry: Registry
    ) -> None:
        self.istiod, self.stream, self.ads, self.registry = istiod, stream, ads, registry
        self.sent = 0

    def send(self, url: str, sha256: str = "", secret: str | None = None) -> str:
        """Send one ECDS version of the module; return its nonce."""
        self.sent += 1
        nonce = f"n{self.sent}"
        env = {PULL_SECRET_ENV: secret} if secret is not None else None
        ext = wasm_extension(url, sha256, env=env)
        self.istiod.send_response(sotw_response(ECDS_TYPE, [ext], f"v{self.sent}", nonce))
        return nonce

    async def push(self, url: str, sha256: str = "", secret: str | None = None) -> str:
        """Send one ECDS version of the module; return the proxy's NACK message."""
        nonce = self.send(url, sha256, secret)
        nacks = await self.istiod.until(
            lambda: [r for r in self.stream.requests if r.response_nonce == nonce], timeout=30
        )
        assert nacks[0].error_detail.code == 13
        return nacks[0].error_detail.message

    def registry_requests(self, repo: str) -> int:
        """Requests the registry logged for ``repo`` (manifests, blobs, tags: all of them)."""
        return sum(1 for _, path in self.registry.requests() if path.startswith(f"/v2/{repo}/"))


def _proxy_fixture(backoff: float):
    @pytest.fixture
    async def fixture(
        istiod: FakeIstiod, oci_registry: Registry, tmp_path: Path
    ) -> AsyncIterator[Pushes]:
        fetch = FetchSettings(
            insecure_registries=frozenset({oci_registry.host}), default_fetch_timeout=30.0
        )
        cache = ModuleCache(CacheSettings(tmp_path / "cache", fetch_backoff=backoff), fetch)
        sock = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp")) / "xds.sock"
        running = await start_proxy(
            sock, UpstreamSettings(address=istiod.address, plaintext=True), WasmConverter(cache)
        )
        ads = AdsClient(f"unix:{sock}")
        await ads.request(ECDS_TYPE, node=True)
        streams = await istiod.until(lambda: istiod.open_streams(), what="upstream stream")
        yield Pushes(istiod, streams[-1], ads, oci_registry)
        await ads.close()
        await running.stop(grace=1)
        cache.close()

    return fixture


proxy = _proxy_fixture(60.0)
# 3 s: the second push must come within the back-off even on a loaded machine
short_proxy = _proxy_fixture(3.0)


def _secret(registry: Registry, user: str) -> str:
    auth = base64.b64encode(f"{user}:pw".encode()).decode()
    return json.dumps({"auths": {registry.host: {"auth": auth}}})


async def test_twenty_pushes_of_a_bad_module_fetch_once(
    proxy: Pushes, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    data = padded_module(2000, seed=131)
    repo = unique_repo("negative")
    oci_pusher.push_wasm_artifact(repo, "v1", data)
    url = oci_registry.oci_url(repo, "v1")
    wrong = "ab" * 32
    before = proxy.registry_requests(repo)
    first = await proxy.push(url, wrong)
    assert "checksum" in first.lower() or "digest" in first.lower(), first
    one_fetch = proxy.registry_requests(repo) - before
    assert one_fetch >= 1
    hits = NEGATIVE_HITS.value()
    started = time.monotonic()
    for _ in range(19):
        again = await proxy.push(url, wrong)
        assert first.split(" (failed ")[0] in again and "not fetched again" in again, again
    elapsed = time.monotonic() - started
    assert proxy.registry_requests(repo) - before == one_fetch  # 20 pushes, one fetch
    assert NEGATIVE_HITS.value() - hits == 19
    print(f"negative: 19 repeated pushes NACKed in {elapsed:.3f}s; one fetch = {one_fetch} reqs")
    # a changed pull secret, a changed sha256 and a changed URL each bypass the negative cache
    secret_a = _secret(oci_registry, "a")
    await proxy.push(url, wrong, secret_a)
    assert proxy.registry_requests(repo) - before == 2 * one_fetch
    await proxy.push(url, wrong, secret_a)  # the same secret again: remembered
    await proxy.push(url, wrong, _secret(oci_registry, "b"))
    assert proxy.registry_requests(repo) - before == 3 * one_fetch
    await proxy.push(url, "cd" * 32)
    assert proxy.registry_requests(repo) - before == 4 * one_fetch
    missing = oci_registry.oci_url(repo, "v2")  # no such tag: a different failure
    await proxy.push(missing)
    await proxy.push(missing)
    assert proxy.registry_requests(repo) - before > 4 * one_fetch
    after_missing = proxy.registry_requests(repo)
    await proxy.push(missing)
    assert proxy.registry_requests(repo) == after_missing


async def test_a_bad_module_is_fetched_again_after_the_backoff(
    short_proxy: Pushes, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    data = padded_module(2000, seed=132)
    repo = unique_repo("negative")
    oci_pusher.push_wasm_artifact(repo, "v1", data)
    url = oci_registry.oci_url(repo, "v1")
    before = short_proxy.registry_requests(repo)
    await short_proxy.push(url, "ef" * 32)
    one_fetch = short_proxy.registry_requests(repo) - before
    remembered = await short_proxy.push(url, "ef" * 32)
    assert short_proxy.registry_requests(repo) - before == one_fetch
    left = re.search(r"not fetched again for another ([\d.]+)s", remembered)
    assert left is not None, remembered
    await asyncio.sleep(float(left.group(1)) + 0.2)  # the back-off ends
    message = await short_proxy.push(url, "ef" * 32)
    assert "not fetched again" not in message
    assert short_proxy.registry_requests(repo) - before == 2 * one_fetch
    # the right sha256 is another key: fetched and forwarded at once, whatever failed before
    nonce = short_proxy.send(url, sha256_hex(data))
    forwarded = await short_proxy.ads.read(timeout=30)
    assert forwarded.nonce == nonce
    assert f"{sha256_hex(data)}.wasm".encode() in forwarded.resources[0].value


async def test_the_proxy_process_takes_the_flags_and_exports_the_metrics(
    istiod: FakeIstiod, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    data = padded_module(3000, seed=133)
    repo = unique_repo("negative")
    oci_pusher.push_wasm_artifact(repo, "v1", data)
    url = oci_registry.oci_url(repo, "v1")
    work = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    flags = ("--plaintext", "--fetch-backoff", "1m", "--cache-max-bytes", "10Mi")
    env = {"WASM_INSECURE_REGISTRIES": oci_registry.host}
    with AgentProcess(work, istiod.address, *flags, env=env) as agent:
        ads = AdsClient(f"unix:{agent.socket}")
        await ads.request(ECDS_TYPE, node=True)
        streams = await istiod.until(lambda: istiod.open_streams(), what="upstream stream")
        pushes = Pushes(istiod, streams[-1], ads, oci_registry)
        before = pushes.registry_requests(repo)
        for _ in range(5):
            await pushes.push(url, "ab" * 32)
        assert pushes.registry_requests(repo) - before == 1  # the first push only
        metrics = agent.metrics()
        assert metrics["istio_agent_wasm_cache_negative_hit_count"] == 4
        assert metrics['istio_agent_wasm_remote_fetch_count{result="checksum_mismatched"}'] == 1
        nonce = pushes.send(url, sha256_hex(data))
        assert (await ads.read(timeout=30)).nonce == nonce
        metrics = agent.metrics()
        assert metrics["istio_agent_wasm_cache_bytes"] >= len(data)  # plus its compiled artifact
        await ads.close()
