"""fetch_oci retries and redirects, with faults injected in front of a real registry."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.registry_proxy import Fault, RegistryProxy
from tests.support.wasm import padded_module
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import DownloadFailure, FetchError
from wasm_agent.fetch.model import FetchedModule, FetchRequest
from wasm_agent.fetch.oci import fetch_oci
from wasm_agent.fetch.retry import Backoff

pytestmark = pytest.mark.registry

FAST = Backoff(initial=0.005, max_interval=0.02)


@pytest.fixture
def proxy(oci_registry: Registry) -> Iterator[RegistryProxy]:
    with RegistryProxy(oci_registry.url) as front:
        yield front


@pytest.fixture
def image(oci_pusher: RawPusher) -> tuple[str, bytes]:
    repo, module = unique_repo(), padded_module(50_000, seed=41)
    oci_pusher.push_oci_image(repo, "v1", module)
    return repo, module


async def pull(proxy: RegistryProxy, repo: str, retries: int = 3) -> FetchedModule:
    settings = FetchSettings(
        insecure_registries=frozenset({proxy.host}),
        http_max_retries=retries,
        default_fetch_timeout=20.0,
    )
    url = f"oci://{proxy.host}/{repo}:v1"
    return await fetch_oci(FetchRequest(url=url), settings, backoff=FAST)


async def test_manifest_5xx_is_retried(proxy: RegistryProxy, image) -> None:
    repo, module = image
    proxy.faults.append(Fault("GET", "/manifests/", "status", times=2, status=503))
    got = await pull(proxy, repo)
    assert got.data == module
    assert proxy.count("GET", f"/v2/{repo}/manifests/v1") == 3


@pytest.mark.parametrize("status", [501, 505])
async def test_unretryable_5xx(proxy: RegistryProxy, image, status: int) -> None:
    repo, _ = image
    proxy.faults.append(Fault("GET", "/manifests/", "status", times=5, status=status))
    with pytest.raises(FetchError, match=str(status)):
        await pull(proxy, repo)
    assert proxy.count("GET", f"/v2/{repo}/manifests/v1") == 1


async def test_truncated_blob_is_retried(proxy: RegistryProxy, image) -> None:
    repo, module = image
    proxy.faults.append(Fault("GET", "/blobs/", "truncate", times=1))
    got = await pull(proxy, repo)
    assert got.data == module
    assert proxy.count("GET", f"/v2/{repo}/blobs/") == 2


async def test_blob_5xx_gives_up_after_max_retries(proxy: RegistryProxy, image) -> None:
    repo, _ = image
    proxy.faults.append(Fault("GET", "/blobs/", "status", times=100, status=502))
    with pytest.raises(DownloadFailure, match=r"502.*after 3 attempts"):
        await pull(proxy, repo)
    assert proxy.count("GET", f"/v2/{repo}/blobs/") == 3


async def test_blob_redirect_is_followed(
    proxy: RegistryProxy, image, oci_registry: Registry
) -> None:
    repo, module = image
    proxy.faults.append(Fault("GET", "/blobs/", "redirect"))
    got = await pull(proxy, repo)
    assert got.data == module
    assert proxy.count("GET", f"/v2/{repo}/blobs/") == 1
    assert oci_registry.count_blob_gets(repo) == 1  # the redirect target served it


async def test_redirect_loop_is_bounded(proxy: RegistryProxy, image) -> None:
    repo, _ = image
    loop = f"{proxy.url}/v2/{repo}/blobs/loop"
    proxy.faults.append(Fault("GET", "/blobs/", "redirect", times=1000, location=loop))
    with pytest.raises(DownloadFailure, match="redirects"):
        await pull(proxy, repo, retries=1)


async def test_redirect_to_other_scheme_refused(proxy: RegistryProxy, image) -> None:
    repo, _ = image
    proxy.faults.append(Fault("GET", "/blobs/", "redirect", location="file:///etc/passwd"))
    with pytest.raises(DownloadFailure, match="file URL"):
        await pull(proxy, repo, retries=1)


async def test_whole_fetch_deadline(proxy: RegistryProxy, image) -> None:
    repo, _ = image
    proxy.faults.append(Fault("GET", "/blobs/", "stall", seconds=3.0))
    settings = FetchSettings(insecure_registries=frozenset({proxy.host}))
    started = time.monotonic()
    with pytest.raises(DownloadFailure, match=r"timed out after 0\.8s"):
        await fetch_oci(
            FetchRequest(url=f"oci://{proxy.host}/{repo}:v1", timeout=0.8), settings, backoff=FAST
        )
    assert time.monotonic() - started < 2.0
