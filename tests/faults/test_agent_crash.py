"""The agent is killed with SIGKILL in the middle of fetching a module, then restarted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.faults import (
    Agent,
    FakeEnvoy,
    assert_cache_clean,
    assert_never_forwarded,
    extension,
    push,
    wait_nack,
    wait_until,
)
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.wasm import code_module, padded_module, sha256_hex

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.mark.parametrize("moment", ["download", "compile"])
def test_sigkill_mid_fetch_then_restart_fetches_again(
    moment: str,
    workdir: Path,
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """SIGKILL of the agent (and its compile worker) half-way through the body, or while the
    downloaded module compiles: nothing reaches Envoy, no module file exists, and a partial
    temp file (if any) is held by no one, so it is never read as a module. After a restart the
    module is fetched again, the leftover is removed, and Envoy gets exactly the right file."""
    if moment == "download":
        data = padded_module(256 * 1024, seed=71)
        # ~13 s in flight: the kill lands mid-body however slowly the machine gets there
        url = mods.slow("/crash.wasm", data, chunk=4096, delay=0.2)
    else:
        data = code_module(2 * 1024 * 1024, seed=72)  # compiles for about a second
        url = mods.serve("/crash.wasm", data)
    sha = sha256_hex(data)
    agent = make_agent()
    envoy = fake_envoy()
    push(istiod, extension(url, sha), "k1")
    cache = agent.cache_dir
    if moment == "download":
        wait_until(lambda: mods.count("/crash.wasm") == 1, 60, "download started")
        wait_until(lambda: agent.counter("xds_proxy_responses") >= 1, 30, "response read")
        time.sleep(0.5)  # some of the body has arrived
    else:  # the worker is held stopped mid-compile, then dies with the agent
        assert agent.process is not None
        assert _stop_running_child(agent.process.pid) is not None
        wait_until(lambda: list((cache / "modules").glob(".tmp-*")), 30, "temp file on disk")
    agent.kill()

    assert "k1" not in envoy.versions()
    modules = assert_cache_clean(cache, allow_abandoned=True)
    assert modules == {}, "a module file exists after a crash mid-fetch"
    leftovers = list((cache / "modules").glob(".tmp-*"))
    assert (moment == "compile") == bool(leftovers)

    mods.serve("/crash.wasm", data)  # fast now: the refetch is quick
    agent.start()
    response = envoy.wait_version("k1", timeout=30)
    assert mods.count("/crash.wasm") == 2  # fetched again, the partial state never reused
    assert_never_forwarded(envoy, allowed={sha})
    assert [s.path.name for s in envoy.seen] == [f"{sha}.wasm"]
    assert response.version_info == "k1"
    assert assert_cache_clean(cache).keys() == {sha}
    assert not list((cache / "modules").glob(".tmp-*"))  # the crashed writer's temp is gone
    assert agent.serving() and agent.status()[0] == 200


def test_sigkill_of_the_downloader_hands_over_to_a_waiting_process(
    workdir: Path,
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """While the agent downloads a module, a ``prefetch`` of the same module on the same
    cache waits for it (one download per module per cache). The agent is killed: its lock dies
    with it, the waiter downloads the module itself and gets the complete file; the restarted
    agent then serves it from the cache without downloading."""
    data = padded_module(256 * 1024, seed=73)
    sha = sha256_hex(data)
    # ~13 s: the agent is still downloading when it is killed, however loaded the machine
    url = mods.slow("/handover.wasm", data, chunk=4096, delay=0.2)
    agent = make_agent()
    envoy = fake_envoy()
    push(istiod, extension(url, sha), "h1")
    wait_until(lambda: mods.count("/handover.wasm") == 1, 60, "download started")
    waiter = subprocess.Popen(
        [sys.executable, "-m", "wasm_agent", "prefetch", "--json", "--cache-dir",
         str(agent.cache_dir), "--sha256", sha, url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=workdir,
        env=agent.env,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # the waiter is polling the download lock
        assert waiter.poll() is None and mods.count("/handover.wasm") == 1
        mods.serve("/handover.wasm", data)  # the waiter's own download is quick
        agent.kill()
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait(10)
    assert waiter.returncode == 0, err
    (result,) = json.loads(out)
    assert result["sha256"] == sha and result["cached"] is False
    assert mods.count("/handover.wasm") == 2
    assert assert_cache_clean(agent.cache_dir).keys() == {sha}
    assert "h1" not in envoy.versions()

    agent.start()
    envoy.wait_version("h1", timeout=30)
    assert mods.count("/handover.wasm") == 2  # served from the cache
    assert_never_forwarded(envoy, allowed={sha})


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "gone"


def _stop_running_child(parent: int) -> int | None:
    """SIGSTOP the child of ``parent`` (the compile worker) so it cannot finish; its pid, or
    None if it had already exited."""
    (child,) = wait_until(lambda: _children(parent), 30, "compile worker")
    os.kill(child, signal.SIGSTOP)
    settled = {"T", "t", "Z", "X", "gone"}  # stopped, or it had exited already
    state = wait_until(lambda: (st := _state(child)) in settled and st, 30, "SIGSTOP")
    return child if state in ("T", "t") else None


def test_compile_worker_killed_like_the_oom_killer(
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The compile worker (a child of the agent) is SIGKILLed while it compiles, as the OOM
    killer would: NACK naming the signal, the temp file is removed, nothing is forwarded, the
    agent goes on; the next push compiles and loads the module."""
    agent = make_agent()
    envoy = fake_envoy()
    assert agent.process is not None
    for attempt in range(3):  # a loaded machine may let a compile finish before we see it
        data = code_module(2 * 1024 * 1024, seed=74 + attempt)  # compiles for about a second
        sha = sha256_hex(data)
        url = mods.serve(f"/oom-{attempt}.wasm", data)
        nonces = push(istiod, extension(url, sha), f"c{attempt}")
        worker = _stop_running_child(agent.process.pid)
        if worker is not None:
            os.kill(worker, signal.SIGKILL)
            break
        envoy.wait_version(f"c{attempt}")
    else:
        raise AssertionError("never caught the compile worker running")
    nack = wait_nack(istiod, nonces, agent=agent)
    assert "compile worker killed by SIGKILL" in nack.error_detail.message, nack
    assert f"c{attempt}" not in envoy.versions()
    assert sha not in assert_cache_clean(agent.cache_dir)
    assert not list((agent.cache_dir / "modules").glob(".tmp-*"))
    assert agent.serving() and agent.status()[0] == 200

    push(istiod, extension(url, sha), "again")
    envoy.wait_version("again", timeout=30)
    assert_never_forwarded(envoy, istiod=istiod, bad_versions={f"c{attempt}"})
    assert envoy.seen[-1].path.name == f"{sha}.wasm"
    assert sha in assert_cache_clean(agent.cache_dir)
    assert envoy.streams == 1
