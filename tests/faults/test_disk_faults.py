"""The cache directory stops accepting writes while the agent runs, then is fixed.

How the faults are made (root ignores file permissions, so ``chmod`` proves nothing):

* no space: a tmpfs of 128 KiB mounted for the test (``mount -t tmpfs -o size=...``) holding
  the cache, grown with ``mount -o remount,size=8m`` to fix it; where mounting is not
  permitted, a file-size limit instead (below);
* a file-size limit: ``RLIMIT_FSIZE`` set on the running agent with ``prlimit(2)`` (Python
  ignores SIGXFSZ, so writes fail with EFBIG), lifted to fix it;
* read-only: the tmpfs remounted ``ro`` (EROFS), or where mounting is not permitted
  ``chattr +i`` on ``modules/`` and ``locks/`` (EPERM, even for root);
* a cache path through a regular file (ENOTDIR), fixed by removing the file.

Every case: the ECDS push needing a new module is NACKed with a message naming the cause,
Envoy (an Envoy-like recording client) receives nothing for it, no partial file is left, the
agent keeps serving (modules already cached still load), and after the fix the next push loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.faults import (
    Agent,
    FakeEnvoy,
    ReadOnly,
    SmallFs,
    assert_cache_clean,
    assert_never_forwarded,
    can_mount,
    extension,
    limit_file_size,
    push,
    wait_nack,
)
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.wasm import padded_module, sha256_hex

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


class Modules:
    """A small module (``a``, 8 KiB) that fits, and a large one (``b``, 512 KiB) that does not."""

    def __init__(self, mods: ModServer, seed: int) -> None:
        self.a, self.b = (
            padded_module(8 * 1024, seed=seed),
            padded_module(512 * 1024, seed=seed + 1),
        )
        self.sha_a, self.sha_b = sha256_hex(self.a), sha256_hex(self.b)
        self.url_a = mods.serve(f"/{seed}/a.wasm", self.a)
        self.url_b = mods.serve(f"/{seed}/b.wasm", self.b)


@contextlib.contextmanager
def cache_on_tmpfs(
    workdir: Path, size: int, wanted: bool = True
) -> Iterator[tuple[Path, SmallFs | None]]:
    """(cache dir, its tmpfs) when ``wanted`` and mounting is permitted, else (a plain cache
    dir, None)."""
    if not (wanted and can_mount()):
        yield workdir / "cache", None
        return
    with SmallFs(workdir / "fs", size) as fs:
        yield fs.path / "cache", fs


def refused(
    agent: Agent, istiod: FakeIstiod, envoy: FakeEnvoy, config: object, version: str,
    cause: str, cached: set[str],
) -> str:  # fmt: skip
    """``version`` is NACKed naming ``cause``; nothing reached Envoy or stayed behind."""
    nack = wait_nack(istiod, push(istiod, config, version))
    message = nack.error_detail.message
    assert cause in message and "cache" in message, message
    assert version not in envoy.versions()
    assert_never_forwarded(envoy, allowed=cached, istiod=istiod, bad_versions={version})
    assert assert_cache_clean(agent.cache_dir).keys() == cached
    assert agent.serving() and agent.status()[0] == 200
    assert envoy.streams == 1 and not envoy.ended
    return message


def loads(envoy: FakeEnvoy, istiod: FakeIstiod, config: object, version: str, sha: str) -> None:
    push(istiod, config, version)
    envoy.wait_version(version)
    assert envoy.seen[-1].path.name == f"{sha}.wasm"
    assert_never_forwarded(envoy, allowed=set(assert_cache_clean(envoy.seen[-1].path.parents[1])))


@pytest.mark.parametrize("fault", ["no-space", "file-size-limit"])
def test_write_fails_then_space_returns(
    fault: str,
    workdir: Path,
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """Writing a module fails half-way (ENOSPC on a full tmpfs; EFBIG past RLIMIT_FSIZE):
    NACK naming the error, the half-written temp file is removed, a cached module still loads;
    once there is room the same push loads."""
    m = Modules(mods, seed=91 if fault == "no-space" else 92)
    with cache_on_tmpfs(workdir, 128 * 1024, fault == "no-space") as (cache_dir, fs):
        agent = make_agent(cache_dir=cache_dir)
        envoy = fake_envoy()
        loads(envoy, istiod, extension(m.url_a, m.sha_a), "d1", m.sha_a)
        tmpfs = fault == "no-space" and fs is not None
        if not tmpfs:
            assert agent.process is not None
            limit_file_size(agent.process.pid, 128 * 1024)
        cause = "No space left on device" if tmpfs else "File too large"
        refused(agent, istiod, envoy, extension(m.url_b, m.sha_b), "d2", cause, {m.sha_a})
        loads(envoy, istiod, extension(m.url_a, m.sha_a), "d3", m.sha_a)  # cached: still fine

        if tmpfs:
            fs.remount("size=8m")
        else:
            limit_file_size(agent.process.pid, None)
        loads(envoy, istiod, extension(m.url_b, m.sha_b), "d4", m.sha_b)
        assert mods.count(f"/{91 if fault == 'no-space' else 92}/b.wasm") == 2
        assert assert_cache_clean(cache_dir).keys() == {m.sha_a, m.sha_b}
        agent.stop()  # before the tmpfs goes


def test_cache_becomes_read_only_then_writable(
    workdir: Path,
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The cache turns read-only under a running agent (tmpfs remounted ``ro``; else
    ``chattr +i``): a new module is NACKed naming the error, the cached one still loads (a
    read-only cache is still a cache); made writable again, the next push loads."""
    m = Modules(mods, seed=93)
    with cache_on_tmpfs(workdir, 16 * 1024 * 1024) as (cache_dir, fs):
        agent = make_agent(cache_dir=cache_dir)
        envoy = fake_envoy()
        loads(envoy, istiod, extension(m.url_a, m.sha_a), "r1", m.sha_a)
        read_only = ReadOnly(cache_dir, fs)
        read_only.on()
        try:
            config = extension(m.url_b, m.sha_b)
            refused(agent, istiod, envoy, config, "r2", read_only.expected_error, {m.sha_a})
            loads(envoy, istiod, extension(m.url_a, m.sha_a), "r3", m.sha_a)
        finally:
            read_only.off()
        loads(envoy, istiod, extension(m.url_b, m.sha_b), "r4", m.sha_b)
        assert assert_cache_clean(cache_dir).keys() == {m.sha_a, m.sha_b}
        agent.stop()


def test_cache_path_blocked_by_a_file(
    workdir: Path,
    istiod: FakeIstiod,
    mods: ModServer,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The cache directory cannot be created (a regular file sits where its parent should
    be): the agent starts and serves, the push is NACKed naming the path; with the file
    removed the next push creates the cache and loads."""
    m = Modules(mods, seed=94)
    blocker = workdir / "blocker"
    blocker.write_text("not a directory\n")
    agent = make_agent(cache_dir=blocker / "cache")
    envoy = fake_envoy()
    nack = wait_nack(istiod, push(istiod, extension(m.url_a, m.sha_a), "p1"))
    assert "Not a directory" in nack.error_detail.message, nack.error_detail.message
    assert str(blocker) in nack.error_detail.message
    assert "p1" not in envoy.versions() and envoy.seen == []
    assert agent.serving() and agent.status()[0] == 200

    blocker.unlink()
    loads(envoy, istiod, extension(m.url_a, m.sha_a), "p2", m.sha_a)
    assert assert_cache_clean(blocker / "cache").keys() == {m.sha_a}
