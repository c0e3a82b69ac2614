"""The module server or the registry misbehaves while the agent fetches a module for Envoy.

Every case: the faulty fetch ends in a NACK with a specific message (never a stream error),
Envoy (an Envoy-like client that records everything it is sent) receives nothing for that
version, the cache holds nothing partial, the agent keeps serving on the same stream, and once
the fault is lifted the next ECDS push loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.faults import (
    Agent,
    FakeEnvoy,
    answered,
    assert_cache_clean,
    assert_never_forwarded,
    extension,
    push,
    wait_nack,
    wait_until,
)
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.plugins_wat import header_plugin
from tests.support.registry import Registry, unique_repo
from tests.support.registry_proxy import Fault, RegistryProxy
from tests.support.wasm import padded_module, sha256_hex

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FAST_RETRIES = {"WASM_HTTP_REQUEST_MAX_RETRIES": "2"}


def recovered(
    agent: Agent,
    istiod: FakeIstiod,
    envoy: FakeEnvoy,
    url: str,
    sha: str,
    version: str,
    configured: str | None = None,
) -> None:
    """The fault is gone: a new push of the same module loads, on the same Envoy stream.
    ``sha``: the module file's sha256; ``configured``: the config's (OCI: manifest digest)."""
    push(istiod, extension(url, configured or sha), version)
    response = envoy.wait_version(version)
    assert_never_forwarded(envoy, allowed={sha})
    assert envoy.seen[-1].path.name == f"{sha}.wasm"
    assert response.version_info == version
    assert assert_cache_clean(agent.cache_dir).keys() == {sha}
    assert_stream_intact(agent, envoy)


def assert_stream_intact(agent: Agent, envoy: FakeEnvoy) -> None:
    """The agent is up and ready, and Envoy's first stream never broke."""
    assert agent.serving() and agent.status()[0] == 200, agent.logs()
    assert envoy.streams == 1 and not envoy.ended, envoy.ended


def nacked_cleanly(
    agent: Agent, istiod: FakeIstiod, envoy: FakeEnvoy, nonces: list[str], version: str
) -> str:
    """The push ``version`` was NACKed; nothing of it reached Envoy or stayed in the cache."""
    nack = wait_nack(istiod, nonces, timeout=30)
    assert nack.error_detail.code == 13
    assert version not in envoy.versions()
    assert_never_forwarded(envoy, istiod=istiod, bad_versions={version})
    assert assert_cache_clean(agent.cache_dir) == {}
    assert_stream_intact(agent, envoy)
    return nack.error_detail.message


# -- the HTTP module server -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "stall", "slowloris"])
def test_module_server_breaks_off_the_body(
    fault: str,
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """A body cut by a TCP reset half-way, a server that stops sending after the headers, and
    one dripping a few bytes at a time (slowloris) past the 1.5 s fetch deadline: NACK naming
    the cause; the partial body is never cached nor forwarded; the agent keeps serving."""
    data = padded_module(64 * 1024, seed=81)
    sha = sha256_hex(data)
    half = len(data) // 2
    if fault == "reset":
        url = mods.reset("/m.wasm", data, after=half)
    elif fault == "stall":
        url = mods.stall("/m.wasm", data, after=1024)
    else:
        url = mods.slow("/m.wasm", data, chunk=64, delay=0.1)  # ~100 s for the whole body
    agent = make_agent(env=FAST_RETRIES)
    envoy = fake_envoy()
    # the reset case counts both attempts: a deadline must not cut them short on a slow machine
    deadline = 30.0 if fault == "reset" else 1.5
    nonces = push(istiod, extension(url, sha, timeout=deadline), "b1")
    wait_until(lambda: mods.count("/m.wasm"), 60, "the download")
    started = time.monotonic()  # the deadline runs from here, not from the push
    message = nacked_cleanly(agent, istiod, envoy, nonces, "b1")
    took = time.monotonic() - started
    if fault == "reset":
        assert mods.count("/m.wasm") == 2  # both attempts cut off
        assert "/m.wasm" in message
    else:
        assert "deadline" in message or "timed out" in message, message
        assert took < 6, f"the 1.5 s deadline took {took:.1f}s to end the fetch"
    assert_never_forwarded(envoy, {sha256_hex(data[:half]), sha256_hex(data[:1024])})

    mods.serve("/m.wasm", data)
    recovered(agent, istiod, envoy, url, sha, "b2")


def test_module_server_503_bursts(
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """503 bursts: one shorter than the retry budget is ridden out (the module loads on the
    same push); one longer NACKs with the status in the message; after it ends, the next push
    loads."""
    data = padded_module(16 * 1024, seed=82)
    sha = sha256_hex(data)
    url = mods.fail("/burst.wasm", 503, times=2, then=data)
    agent = make_agent(env={"WASM_HTTP_REQUEST_MAX_RETRIES": "3"})
    envoy = fake_envoy()
    push(istiod, extension(url, sha), "s1")
    envoy.wait_version("s1")
    assert mods.count("/burst.wasm") == 3
    assert_never_forwarded(envoy, allowed={sha})

    other = padded_module(16 * 1024, seed=83)
    other_sha = sha256_hex(other)
    long_url = mods.fail("/long.wasm", 503)  # until the test lifts it
    nonces = push(istiod, extension(long_url, other_sha), "s2")
    message = nacked_cleanly_keeping(agent, istiod, envoy, nonces, "s2", keep={sha})
    assert "503" in message, message
    assert mods.count("/long.wasm") == 3

    mods.serve("/long.wasm", other)
    push(istiod, extension(long_url, other_sha), "s3")
    envoy.wait_version("s3")
    assert_never_forwarded(envoy, allowed={sha, other_sha})
    assert assert_cache_clean(agent.cache_dir).keys() == {sha, other_sha}
    assert_stream_intact(agent, envoy)


def nacked_cleanly_keeping(
    agent: Agent,
    istiod: FakeIstiod,
    envoy: FakeEnvoy,
    nonces: list[str],
    version: str,
    keep: set[str],
) -> str:
    """Like :func:`nacked_cleanly` when the cache already holds ``keep``."""
    nack = wait_nack(istiod, nonces, timeout=30)
    assert version not in envoy.versions()
    assert_never_forwarded(envoy, allowed=keep, istiod=istiod, bad_versions={version})
    assert assert_cache_clean(agent.cache_dir).keys() == keep
    assert_stream_intact(agent, envoy)
    return nack.error_detail.message


def test_module_server_serves_other_bytes(
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The server answers a configured sha256 with a different (valid) module: NACK
    (checksum), the wrong module is neither cached nor forwarded."""
    good, wrong = header_plugin("good1"), header_plugin("evil1")
    url = mods.serve("/swap.wasm", wrong)
    agent = make_agent()
    envoy = fake_envoy()
    nonces = push(istiod, extension(url, sha256_hex(good)), "w1")
    message = nacked_cleanly(agent, istiod, envoy, nonces, "w1")
    assert "checksum" in message.lower() or "sha256" in message.lower(), message
    assert_never_forwarded(envoy, sha256_hex(wrong))
    mods.serve("/swap.wasm", good)
    recovered(agent, istiod, envoy, url, sha256_hex(good), "w2")


# -- the registry -----------------------------------------------------------------------------


@pytest.fixture
def registry_proxy(oci_registry: Registry) -> Iterator[RegistryProxy]:
    with RegistryProxy(oci_registry.url) as proxy:
        yield proxy


def _oci_agent(make_agent: Callable[..., Agent], *hosts: str) -> Agent:
    return make_agent(env={"WASM_INSECURE_REGISTRIES": ",".join(hosts), **FAST_RETRIES})


@pytest.mark.registry
@pytest.mark.parametrize("fault", ["truncate", "503", "stall"])
def test_registry_faults_on_the_layer(
    fault: str,
    istiod: FakeIstiod,
    oci_registry: Registry,
    oci_pusher,
    registry_proxy: RegistryProxy,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The layer download through a faulty front of the real registry: cut half-way
    (``truncate``), 503 (``503``), or held past the 1.5 s deadline (``stall``). Once:
    ridden out by a retry, the module loads. Always: NACK, nothing cached or forwarded; lifted:
    the next push loads."""
    repo = unique_repo("faults")
    data = padded_module(64 * 1024, seed=84)
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", data)
    url = f"oci://{registry_proxy.host}/{repo}:v1"
    blobs = rf"^/v2/{repo}/blobs/"
    agent = _oci_agent(make_agent, registry_proxy.host)
    envoy = fake_envoy()

    if fault != "stall":  # once: the retry gets the whole layer
        registry_proxy.faults.append(Fault("GET", blobs, fault if fault != "503" else "status"))
        push(istiod, extension(url, pushed.hex), "o1")
        envoy.wait_version("o1")
        assert registry_proxy.count("GET", blobs) == 2
        assert_never_forwarded(envoy, allowed={sha256_hex(data)})
        assert assert_cache_clean(agent.cache_dir).keys() == {sha256_hex(data)}
        # a second module of the same kind for the persistent fault
        repo = unique_repo("faults")
        data = padded_module(64 * 1024, seed=85)
        pushed = oci_pusher.push_wasm_artifact(repo, "v1", data)
        url = f"oci://{registry_proxy.host}/{repo}:v1"
        blobs = rf"^/v2/{repo}/blobs/"

    action = {"503": "status"}.get(fault, fault)
    registry_proxy.faults.append(Fault("GET", blobs, action, times=100, seconds=2.5))
    # the 1.5 s deadline is for the stall; the others fail on their own, however slowly
    deadline = 1.5 if fault == "stall" else 30.0
    nonces = push(istiod, extension(url, pushed.hex, timeout=deadline), "o2")
    nack = wait_nack(istiod, nonces, timeout=30)
    assert "o2" not in envoy.versions()
    assert_never_forwarded(envoy, bad_sha=sha256_hex(data[: len(data) // 2]))
    assert_never_forwarded(envoy, istiod=istiod, bad_versions={"o2"})
    expected = {"503": "503", "stall": "deadline", "truncate": "attempt"}[fault]
    assert expected in nack.error_detail.message, nack.error_detail.message
    assert sha256_hex(data) not in assert_cache_clean(agent.cache_dir)
    assert_stream_intact(agent, envoy)

    registry_proxy.faults.clear()
    push(istiod, extension(url, pushed.hex), "o3")
    envoy.wait_version("o3")
    assert_never_forwarded(envoy, allowed=assert_cache_clean(agent.cache_dir).keys())
    assert sha256_hex(data) in assert_cache_clean(agent.cache_dir)
    assert_stream_intact(agent, envoy)


@pytest.mark.registry
def test_registry_serves_a_different_blob_for_the_digest(
    istiod: FakeIstiod,
    oci_registry: Registry,
    oci_pusher,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The registry's stored layer is replaced by another valid module of the same size (same
    digest in the manifest, other bytes): the digest check fails, NACK; the substitute is never
    cached or forwarded. With the blob restored, the next push loads the real module."""
    tag = unique_repo("t").split("/")[1][:8]
    good, evil = header_plugin(f"good-{tag}"), header_plugin(f"evil-{tag}")
    assert len(good) == len(evil)
    repo = unique_repo("faults")
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", good)
    layer = "sha256:" + sha256_hex(good)
    oci_registry.tamper_blob(layer, evil)
    url = oci_registry.oci_url(repo, "v1")
    agent = _oci_agent(make_agent, oci_registry.host)
    envoy = fake_envoy()

    nonces = push(istiod, extension(url, pushed.hex), "t1")
    message = nacked_cleanly(agent, istiod, envoy, nonces, "t1")
    assert f"layer bytes hash to sha256:{sha256_hex(evil)}, not {layer}" in message, message
    assert_never_forwarded(envoy, sha256_hex(evil))
    assert oci_registry.count_blob_gets(repo) >= 1  # it was downloaded, and refused

    oci_registry.tamper_blob(layer, good)
    recovered(agent, istiod, envoy, url, sha256_hex(good), "t2", configured=pushed.hex)
    assert answered(istiod, nonces[0])[0].HasField("error_detail")
