"""istiod and Envoy (real Envoy) go away and come back, also in the middle of a conversion.

Every case: Envoy ends up with the newest config and serves traffic with the right module,
no config it received named a file whose content does not match its name, a response whose
conversion was interrupted is never answered on the dead stream, the cache holds nothing
partial, and the agent is ready again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.echo import EchoServer
from tests.support.faults import (
    Agent,
    EcdsWatcher,
    EnvoyMesh,
    answered,
    assert_cache_clean,
    assert_never_forwarded,
    extension,
    push,
    wait_until,
)
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.plugins_wat import header_plugin
from tests.support.wasm import sha256_hex
from wasm_agent.xds.types import ECDS_TYPE

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def mesh(workdir: Path, echo: EchoServer, make_agent: Callable[..., Agent]) -> Iterator[EnvoyMesh]:
    """The agent and a real Envoy (SotW) on its socket."""
    mesh = EnvoyMesh(workdir, make_agent(), echo.port)
    mesh.start_envoy()
    try:
        yield mesh
    finally:
        mesh.stop_envoy()


class Plugins:
    """Two header plugins: ``first`` served at once, ``second`` dripped over ~2.5 s."""

    def __init__(self, mods: ModServer, name: str) -> None:
        self.mods = mods
        self.first, self.second = header_plugin(f"{name}-1"), header_plugin(f"{name}-2")
        self.sha1, self.sha2 = sha256_hex(self.first), sha256_hex(self.second)
        self.path2 = f"/{name}/2.wasm"
        self.url1 = mods.serve(f"/{name}/1.wasm", self.first)
        self.url2 = mods.slow(self.path2, self.second, chunk=16, delay=0.1)

    def fast(self) -> None:
        self.mods.serve(self.path2, self.second)

    @property
    def downloads2(self) -> int:
        return self.mods.count(self.path2)


def loaded_first(mesh: EnvoyMesh, istiod: FakeIstiod, plugins: Plugins, name: str) -> None:
    push(istiod, extension(plugins.url1, plugins.sha1), "v1")
    mesh.wait_ecds_version("v1")
    mesh.header_becomes(f"{name}-1")


def converting_second(istiod: FakeIstiod, plugins: Plugins) -> tuple[object, str]:
    """Push the slow module; return (the stream it went on, its nonce) once it downloads."""
    stream = istiod.open_streams()[-1]
    (nonce,) = push(istiod, extension(plugins.url2, plugins.sha2), "v2")
    wait_until(lambda: plugins.downloads2 >= 1, 60, "download of the second module")
    return stream, nonce


def settled(
    mesh: EnvoyMesh, istiod: FakeIstiod, watcher: EcdsWatcher, plugins: Plugins, name: str
) -> None:
    """Envoy serves the second module; invariants hold; the agent is ready."""
    mesh.wait_ecds_version("v2", timeout=45)
    mesh.header_becomes(f"{name}-2")
    wanted = f"{plugins.sha2}.wasm"
    wait_until(lambda: watcher.seen and watcher.seen[-1].path.name == wanted, 30, "watcher")
    assert_never_forwarded(watcher, allowed={plugins.sha1, plugins.sha2})
    assert assert_cache_clean(mesh.agent.cache_dir).keys() == {plugins.sha1, plugins.sha2}
    wait_until(lambda: mesh.agent.status()[0] == 200, 45, "agent ready")
    assert mesh.agent.serving()
    assert not istiod.nacks(ECDS_TYPE)


def test_istiod_stream_reset_mid_conversion(
    mesh: EnvoyMesh, istiod: FakeIstiod, mods: ModServer
) -> None:
    """istiod resets the stream (UNAVAILABLE) while the agent downloads a module for an ECDS
    response: the conversion is abandoned and that response never answered; Envoy's stream
    ends, Envoy reconnects through the agent, istiod sends the config again and it loads."""
    plugins = Plugins(mods, "reset")
    with EcdsWatcher(mesh) as watcher:
        loaded_first(mesh, istiod, plugins, "reset")
        before = len(istiod.streams)
        stream, nonce = converting_second(istiod, plugins)
        istiod.abort(stream, grpc.StatusCode.UNAVAILABLE, "injected reset")
        assert mesh.ecds()["version_info"] == "v1"  # the interrupted config never arrived
        wait_until(lambda: len(istiod.streams) > before, 60, "Envoy reconnected")
        plugins.fast()
        settled(mesh, istiod, watcher, plugins, "reset")
    assert answered(istiod, nonce) == []
    assert mesh.agent.counter('istiod_connection_terminations{type="error"}') >= 1


def test_istiod_restarted_mid_conversion(
    mesh: EnvoyMesh, istiod: FakeIstiod, mods: ModServer
) -> None:
    """istiod stops during a download and comes back a second later on the same address:
    the agent reports not ready while it has no upstream stream, Envoy reconnects through it,
    and the config istiod sends again loads."""
    plugins = Plugins(mods, "restart")
    with EcdsWatcher(mesh) as watcher:
        loaded_first(mesh, istiod, plugins, "restart")
        _, nonce = converting_second(istiod, plugins)
        istiod.stop()
        wait_until(lambda: mesh.agent.status()[0] == 503, 45, "agent not ready")
        time.sleep(1.0)
        plugins.fast()
        istiod.start()
        settled(mesh, istiod, watcher, plugins, "restart")
    assert answered(istiod, nonce) == []


def test_envoy_restarted_mid_conversion(
    mesh: EnvoyMesh, istiod: FakeIstiod, mods: ModServer
) -> None:
    """Envoy is killed (SIGKILL) while the agent downloads a module for it: the agent drops
    that stream and its conversion; a new Envoy subscribes, gets the config and loads the
    module; the first module comes from the cache (no second download)."""
    plugins = Plugins(mods, "envoy")
    with EcdsWatcher(mesh) as watcher:
        loaded_first(mesh, istiod, plugins, "envoy")
        _, nonce = converting_second(istiod, plugins)
        assert mesh.envoy is not None and mesh.envoy.process is not None
        mesh.envoy.process.kill()
        mesh.envoy.process.wait(10)
        wait_until(lambda: mesh.agent.counter("xds_proxy_streams") == 0, 45, "stream gone")
        plugins.fast()
        mesh.start_envoy()
        settled(mesh, istiod, watcher, plugins, "envoy")
    assert answered(istiod, nonce) == []
    assert mods.count("/envoy/1.wasm") == 1


def test_istiod_and_envoy_restarted_together(
    mesh: EnvoyMesh, istiod: FakeIstiod, mods: ModServer
) -> None:
    """Envoy and istiod both go away; Envoy comes back first (while istiod is still down) and
    istiod a second later: Envoy gets its config through the agent once istiod is up, and the
    modules come from the cache (no download)."""
    plugins = Plugins(mods, "both")
    plugins.fast()
    with EcdsWatcher(mesh) as watcher:
        loaded_first(mesh, istiod, plugins, "both")
        push(istiod, extension(plugins.url2, plugins.sha2), "v2")
        mesh.wait_ecds_version("v2")
        mesh.header_becomes("both-2")
        downloads = (mods.count("/both/1.wasm"), plugins.downloads2)
        assert mesh.envoy is not None
        mesh.envoy.stop()
        istiod.stop()
        mesh.start_envoy()
        time.sleep(1.0)
        assert mesh.agent.serving()
        istiod.start()
        settled(mesh, istiod, watcher, plugins, "both")
    assert (mods.count("/both/1.wasm"), plugins.downloads2) == downloads == (1, 1)
