"""Module requests on the pods' node.sock: one download per node, read-only placement,
private modules stay private, holds, a crash mid-download, restarts, 50 views at once."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.node.harness import Kubelet, NodeProcess, Pod, mounted
from tests.support.modserver import ModServer
from tests.support.oci_push import RawPusher
from tests.support.registry import (
    PUSH_PASSWORD,
    PUSH_USER,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    Registry,
    unique_repo,
)
from tests.support.wasm import code_module, minimal_module, sha256_hex
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.cache.module_cache import ModuleCache
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.fetch.errors import AuthFailure, DownloadFailure, FetchError
from wasm_agent.node.client import NodeModuleSource


@pytest.fixture
def modserver() -> Iterator[ModServer]:
    with ModServer() as server:
        yield server


def start_node(tmp_path: Path, registry: Registry | None = None, *args: str) -> NodeProcess:
    env = {"WASM_INSECURE_REGISTRIES": registry.host} if registry else {}
    return NodeProcess(tmp_path / "node", *args, env=env).start()


def pull_secret(host: str, user: str, password: str) -> bytes:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": auth}}}).encode()


def published(kubelet: Kubelet, name: str) -> Pod:
    pod = kubelet.pod(name)
    kubelet.publish(pod)
    return pod


async def test_two_pods_one_download_read_only_placement(
    tmp_path: Path, modserver: ModServer
) -> None:
    module = code_module(4000, seed=3)
    url = modserver.serve("/plugin.wasm", module)
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            pods = [published(kubelet, "a"), published(kubelet, "b")]
            request = ModuleRequest(url=url, sha256=sha256_hex(module), timeout=20)
            got = [await NodeModuleSource(pod.socket).get(request) for pod in pods]
        assert modserver.count("/plugin.wasm") == 1
        for pod, module_file in zip(pods, got, strict=True):
            assert module_file.path == pod.target / "modules" / f"{sha256_hex(module)}.wasm"
            assert module_file.path.read_bytes() == module
            assert mounted(module_file.path)  # a read-only bind mount of the cache file
            assert module_file.path.stat().st_mode & 0o777 == 0o444
            with pytest.raises(OSError, match="Read-only file system"):
                module_file.path.write_bytes(b"\0asm")
        assert [m.hit for m in got] == [False, True]
        assert 'wasm_node_module_requests{result="placed"} 2' in node.metrics()
    finally:
        node.cleanup()


NON_ROOT_WRITE = """
import os, sys
view = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)  # reached as root, like kubelet's dirs
os.setgid(65534); os.setuid(65534)  # then act as the pod's non-root user inside the view
module = "modules/" + sys.argv[2]
actions = {
    "append": lambda: os.close(os.open(module, os.O_WRONLY | os.O_APPEND, dir_fd=view)),
    "create": lambda: os.close(os.open("modules/evil.wasm", os.O_WRONLY | os.O_CREAT, dir_fd=view)),
    "remove": lambda: os.unlink(module, dir_fd=view),
    "rename": lambda: os.rename(module, "x", src_dir_fd=view, dst_dir_fd=view),
    "chmod": lambda: os.chmod(module, 0o666, dir_fd=view),
    "socket-dir": lambda: os.mkdir("new", dir_fd=view),
}
results = []
for name, action in actions.items():
    try:
        action()
        results.append(name + "=written")
    except OSError as error:
        results.append(name + "=" + str(error.errno))
print("|".join(results))
"""


async def test_a_pod_cannot_write_its_view(tmp_path: Path, modserver: ModServer) -> None:
    import errno

    module = minimal_module()
    url = modserver.serve("/m.wasm", module)
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "a")
            await NodeModuleSource(pod.socket).get(ModuleRequest(url=url, timeout=20))
        name = f"{sha256_hex(module)}.wasm"
        out = subprocess.run(
            [sys.executable, "-c", NON_ROOT_WRITE, str(pod.target), name],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip().split("|")  # fmt: skip
        refused = {str(errno.EACCES), str(errno.EPERM), str(errno.EROFS)}
        assert len(out) == 6 and all(r.split("=")[1] in refused for r in out), out
        # root in the pod (or a pod with CAP_DAC_OVERRIDE) meets the read-only mounts
        for attempt in (lambda: (pod.target / "modules" / "evil").write_bytes(b"x"),
                        lambda: (pod.target / "modules" / name).write_bytes(b"x"),
                        lambda: os.chmod(pod.target / "modules" / name, 0o666)):  # fmt: skip
            with pytest.raises(OSError, match="Read-only file system"):
                attempt()
        assert (pod.target / "modules" / name).read_bytes() == module
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def private_image(oci_registry_basic: Registry) -> tuple[str, bytes]:
    repo, module = unique_repo("private"), code_module(3000, seed=14)
    with RawPusher(oci_registry_basic.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        pusher.push_wasm_artifact(repo, "v1", module)
    return repo, module


TTL = 5  # seconds a registry's "yes" is remembered in the test below (a loaded machine
# needs seconds between the grant and the "remembered" check)


async def test_private_module_needs_the_pods_own_credentials(
    tmp_path: Path, oci_registry_basic: Registry, private_image: tuple[str, bytes]
) -> None:
    repo, module = private_image
    url = oci_registry_basic.oci_url(repo, "v1")
    host = oci_registry_basic.host
    node = start_node(tmp_path, oci_registry_basic, "--access-ttl", f"{TTL}s")
    try:
        with Kubelet(node) as kubelet:
            owner, stranger, liar = (published(kubelet, n) for n in ("owner", "stranger", "liar"))
            good = ModuleRequest(
                url=url, pull_secret=pull_secret(host, REGISTRY_USER, REGISTRY_PASSWORD),
                timeout=20,
            )  # fmt: skip
            manifests = rf"^/v2/{repo}/manifests/"
            placed = await NodeModuleSource(owner.socket).get(good)
            granted = time.monotonic()  # the node's "yes" is no newer than this
            assert placed.path.read_bytes() == module
            checks = oci_registry_basic.count_requests("GET", manifests)
            again = await NodeModuleSource(owner.socket).get(good)  # remembered: no new check
            assert again.hit
            assert oci_registry_basic.count_requests("GET", manifests) == checks
            with pytest.raises(AuthFailure) as denied:
                await NodeModuleSource(stranger.socket).get(ModuleRequest(url=url, timeout=20))
            assert "registry refused no credentials" in str(denied.value)
            wrong = ModuleRequest(
                url=url, pull_secret=pull_secret(host, REGISTRY_USER, "wrong"), timeout=20
            )
            with pytest.raises(AuthFailure, match="refused the pod's pull secret"):
                await NodeModuleSource(liar.socket).get(wrong)
            assert list((stranger.target / "modules").iterdir()) == []
            assert list((liar.target / "modules").iterdir()) == []
            checks = oci_registry_basic.count_requests("GET", manifests)
            time.sleep(max(0.0, granted + TTL + 0.3 - time.monotonic()))
            await NodeModuleSource(owner.socket).get(good)  # the answer expired: asked again
            assert oci_registry_basic.count_requests("GET", manifests) > checks
        assert oci_registry_basic.count_blob_gets(repo) == 1  # the Wasm layer, once
        logs = node.logs()
        for secret in (good.pull_secret, wrong.pull_secret):
            assert secret is not None
            assert base64.b64encode(secret).decode() not in logs
            assert json.loads(secret)["auths"][host]["auth"] not in logs
        assert REGISTRY_PASSWORD not in logs
    finally:
        node.cleanup()


async def test_unpublish_releases_holds_so_purge_may_remove(
    tmp_path: Path, modserver: ModServer
) -> None:
    module = minimal_module()
    url = modserver.serve("/held.wasm", module)
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            first, second = published(kubelet, "a"), published(kubelet, "b")
            for pod in (first, second):
                placed = await NodeModuleSource(pod.socket).get(ModuleRequest(url=url, timeout=20))
            cache = ModuleCache(CacheSettings(node.cache_dir, module_expiry=0), FetchSettings())
            cache_file = node.cache_dir / "modules" / placed.path.name
            later = time.time() + 3600
            assert cache.purge(now=later) == []  # held for both views
            kubelet.unpublish(first)
            assert not first.target.exists()
            assert cache.purge(now=later) == []  # still held for the second view
            assert (second.target / "modules" / placed.path.name).read_bytes() == module
            kubelet.unpublish(second)
            assert cache.purge(now=later) == [cache_file]
    finally:
        node.cleanup()


async def test_killed_mid_download_then_restarted(tmp_path: Path, modserver: ModServer) -> None:
    module = code_module(20000, seed=5)
    # 20 s if left to finish: still under way when the node is killed, however loaded
    url = modserver.slow("/slow.wasm", module, chunk=1000, delay=1.0)
    first = minimal_module()
    first_url = modserver.serve("/first.wasm", first)
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "a")
            source = NodeModuleSource(pod.socket)
            await source.get(ModuleRequest(url=first_url, timeout=20))
            import asyncio

            pending = asyncio.create_task(source.get(ModuleRequest(url=url, timeout=30)))
            deadline = time.monotonic() + 60
            while modserver.count("/slow.wasm") == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            node.kill()
            modserver.serve("/slow.wasm", module)  # the download after the restart is quick
            with pytest.raises(DownloadFailure, match="node service closed the connection"):
                await pending
            name = f"{sha256_hex(module)}.wasm"
            assert not (node.cache_dir / "modules" / name).exists()
            assert sorted(p.name for p in (pod.target / "modules").iterdir()) == [
                f"{sha256_hex(first)}.wasm"
            ]
            with pytest.raises(DownloadFailure, match="node service unavailable"):
                await source.get(ModuleRequest(url=url, timeout=30))
            node.start()  # views intact: same mounts, socket served again, holds restored
            assert mounted(pod.target)
            assert (pod.target / "modules" / f"{sha256_hex(first)}.wasm").read_bytes() == first
            got = await source.get(ModuleRequest(url=url, timeout=30))
            assert got.path.read_bytes() == module
            assert not list((node.cache_dir / "modules").glob(".tmp-*"))
            cache = ModuleCache(CacheSettings(node.cache_dir, module_expiry=0), FetchSettings())
            assert cache.purge(now=time.time() + 3600) == []  # the restored view holds both
    finally:
        node.cleanup()


async def test_fifty_views_publishing_at_once(tmp_path: Path, modserver: ModServer) -> None:
    module = minimal_module()
    url = modserver.serve("/many.wasm", module)
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            pods = [kubelet.pod(f"p{i}") for i in range(50)]
            with ThreadPoolExecutor(50) as pool:
                list(pool.map(kubelet.publish, pods))
            assert all(mounted(pod.target) for pod in pods)
            import asyncio

            got = await asyncio.gather(
                *(NodeModuleSource(p.socket).get(ModuleRequest(url=url, timeout=30)) for p in pods)
            )
            assert all(g.path.read_bytes() == module for g in got)
            assert modserver.count("/many.wasm") == 1
            assert "wasm_node_volumes 50" in node.metrics()
            with ThreadPoolExecutor(50) as pool:
                list(pool.map(kubelet.unpublish, pods))
            assert not any(pod.target.exists() for pod in pods)
            assert "wasm_node_volumes 0" in node.metrics()
    finally:
        node.cleanup()


async def test_pods_may_not_ask_for_node_files(tmp_path: Path) -> None:
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "a")
            for url in ("/etc/passwd", "file:///etc/passwd"):
                with pytest.raises(AuthFailure, match=r"only ask for http\(s\):// or oci://"):
                    await NodeModuleSource(pod.socket).get(ModuleRequest(url=url, timeout=5))
            with pytest.raises(FetchError, match="'timeout' must be"):
                await NodeModuleSource(pod.socket).get(ModuleRequest(url="oci://x/y", timeout=-1))
    finally:
        node.cleanup()


async def test_bad_lines_and_too_many_connections_are_refused(tmp_path: Path) -> None:
    from wasm_agent.node.protocol import decode_answer
    from wasm_agent.node.unixsock import connect_unix

    node = start_node(tmp_path)
    held = []
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "a")
            with connect_unix(pod.socket, 10) as sock:
                for line in (b"not json\n", b"[1]\n", b'{"url": 5}\n', b'{"timeout": 1}\n'):
                    sock.sendall(line)
                    answer = decode_answer(sock.makefile("rb").readline())
                    assert answer.reason == "bad_request", answer
            held = [connect_unix(pod.socket, 10) for _ in range(16)]
            for sock in held:  # each one is served: the node answers a request on it
                sock.sendall(b"{}\n")
                assert decode_answer(sock.makefile("rb").readline()).reason == "bad_request"
            with connect_unix(pod.socket, 10) as extra:
                answer = decode_answer(extra.makefile("rb").readline())
            assert answer.reason == "unavailable" and "too many connections" in answer.error
            assert 'wasm_node_module_requests{result="bad_request"}' in node.metrics()
    finally:
        for sock in held:
            sock.close()
        node.cleanup()


def stalled(modserver: ModServer, prefix: str, modules: list[bytes]) -> list[str]:
    """URLs serving each module 250 bytes a second (24 s for 6,000 bytes: ample on a loaded
    machine) until :func:`release`."""
    return [
        modserver.slow(f"/{prefix}{i}.wasm", m, chunk=250, delay=1.0) for i, m in enumerate(modules)
    ]


async def until_started(modserver: ModServer, paths: list[str], count: int) -> None:
    """Wait (up to 60 s) until ``count`` of the downloads of ``paths`` have begun."""
    import asyncio

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(modserver.count(p) for p in paths) < count:
        await asyncio.sleep(0.05)


def release(modserver: ModServer, paths: list[str]) -> None:
    """Let stalled downloads finish (the next chunk comes within 1 s)."""
    for path in paths:
        modserver.routes[path].drip_delay = 0.02


async def test_one_pod_has_at_most_two_downloads_in_progress(
    tmp_path: Path, modserver: ModServer
) -> None:
    import asyncio

    modules = [code_module(6000, seed=40 + i) for i in range(3)]
    urls = [  # held (6 s each) until the slots are checked, then released below
        modserver.slow(f"/slot{i}.wasm", m, chunk=1000, delay=1.0) for i, m in enumerate(modules)
    ]
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "greedy")
            source = NodeModuleSource(pod.socket)
            tasks = [
                asyncio.create_task(source.get(ModuleRequest(url=u, timeout=60))) for u in urls
            ]
            paths = [f"/slot{i}.wasm" for i in range(3)]
            await until_started(modserver, paths, 2)
            await asyncio.sleep(0.5)
            started = [modserver.count(p) for p in paths]
            assert sorted(started) == [0, 1, 1], started  # the third waits for a slot
            release(modserver, paths)
            got = await asyncio.gather(*tasks)
            assert [g.path.read_bytes() for g in got] == modules
    finally:
        node.cleanup()


async def test_a_pods_slots_are_per_pod_not_per_volume_and_a_wait_is_bounded(
    tmp_path: Path, modserver: ModServer
) -> None:
    """Review 5, F2: the 2 download slots were counted per CSI volume, so a pod declaring 8
    volumes took all 16 node slots, and a request waiting for a slot outlived its timeout.
    One pod, three volumes: two stalled downloads take the pod's 2 slots; the third volume's
    request (timeout 3 s) is refused naming the busy slots, without its download starting."""
    import asyncio

    from tests.node.harness import Pod

    held = [code_module(6000, seed=70 + i) for i in range(2)]
    urls = stalled(modserver, "held", held)
    paths = [f"/held{i}.wasm" for i in range(2)]
    third = modserver.serve("/third.wasm", minimal_module())
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            first = kubelet.pod("multi")
            volumes = [first]
            for name in ("wasm2", "wasm3"):
                other = kubelet.pod("multi", volume=name)
                volumes.append(
                    Pod(first.uid, first.name, first.namespace, other.volume_id,
                        node.pods_dir / first.uid / "volumes" / "kubernetes.io~csi" / name
                        / "mount")
                )  # fmt: skip
            for volume in volumes:
                kubelet.publish(volume)
            tasks = [
                asyncio.create_task(
                    NodeModuleSource(volumes[i].socket).get(ModuleRequest(url=url, timeout=120))
                )
                for i, url in enumerate(urls)
            ]
            await until_started(modserver, paths, 2)
            started = time.monotonic()
            with pytest.raises(DownloadFailure, match=r"every download slot .* stayed busy"):
                await NodeModuleSource(volumes[2].socket).get(ModuleRequest(url=third, timeout=3))
            assert time.monotonic() - started < 30  # bounded by its 3 s, not the 24 s stall
            assert modserver.count("/third.wasm") == 0
            assert not any(task.done() for task in tasks)
            release(modserver, paths)
            placed = await asyncio.gather(*tasks)
            assert [p.path.read_bytes() for p in placed] == held
    finally:
        node.cleanup()


async def test_two_pods_with_stalled_downloads_do_not_hold_up_a_third(
    tmp_path: Path, modserver: ModServer
) -> None:
    """Review 4, 5a: two pods each holding their 2 download slots on servers that barely answer
    held every node slot (4), so a third pod's 2 KB module waited 42 s. With 16 node slots
    (``--max-fetches``), the third pod's module is placed while theirs are still under way."""
    import asyncio

    held = [code_module(6000, seed=60 + i) for i in range(4)]
    urls = stalled(modserver, "stall", held)  # released once the victim is served
    paths = [f"/stall{i}.wasm" for i in range(4)]
    small = minimal_module()
    small_url = modserver.serve("/small.wasm", small)
    node = start_node(tmp_path)
    try:
        with Kubelet(node) as kubelet:
            attackers = [published(kubelet, "a1"), published(kubelet, "a2")]
            victim = published(kubelet, "victim")
            tasks = [
                asyncio.create_task(
                    NodeModuleSource(attackers[i // 2].socket).get(
                        ModuleRequest(url=url, timeout=120)
                    )
                )
                for i, url in enumerate(urls)
            ]
            await until_started(modserver, paths, 4)
            assert [modserver.count(p) for p in paths] == [1, 1, 1, 1]
            got = await NodeModuleSource(victim.socket).get(
                ModuleRequest(url=small_url, sha256=sha256_hex(small), timeout=60)
            )
            assert got.path.read_bytes() == small
            assert not any(task.done() for task in tasks)  # placed while theirs still stall
            release(modserver, paths)
            placed = await asyncio.gather(*tasks)
            assert [p.path.read_bytes() for p in placed] == held
    finally:
        node.cleanup()


async def test_token_registry_scopes_are_per_repository(
    tmp_path: Path, oci_registry_token: Registry
) -> None:
    from tests.support.registry import OTHER_PASSWORD, OTHER_USER

    repo, module = f"alice/{unique_repo('node').split('/')[1]}", code_module(2500, seed=77)
    with RawPusher(oci_registry_token.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        pusher.push_wasm_artifact(repo, "v1", module)
    url, host = oci_registry_token.oci_url(repo, "v1"), oci_registry_token.host
    node = start_node(tmp_path, oci_registry_token)
    try:
        with Kubelet(node) as kubelet:
            alice, bob, anonymous = (published(kubelet, n) for n in ("alice", "bob", "anon"))
            mine = pull_secret(host, REGISTRY_USER, REGISTRY_PASSWORD)
            got = await NodeModuleSource(alice.socket).get(
                ModuleRequest(url=url, pull_secret=mine, timeout=20)
            )
            assert got.path.read_bytes() == module
            bobs = pull_secret(host, OTHER_USER, OTHER_PASSWORD)  # valid user, other repos
            with pytest.raises(AuthFailure, match="refused the pod's pull secret"):
                await NodeModuleSource(bob.socket).get(
                    ModuleRequest(url=url, pull_secret=bobs, timeout=20)
                )
            with pytest.raises(AuthFailure, match="refused no credentials"):
                await NodeModuleSource(anonymous.socket).get(ModuleRequest(url=url, timeout=20))
    finally:
        node.cleanup()


async def test_without_mounts_modules_are_hardlinked_read_only(
    tmp_path: Path, modserver: ModServer
) -> None:
    import errno

    module = minimal_module()
    url = modserver.serve("/linked.wasm", module)
    node = start_node(tmp_path, None, "--no-mounts")
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "a")
            assert not mounted(pod.target)
            got = await NodeModuleSource(pod.socket).get(ModuleRequest(url=url, timeout=20))
            assert got.path.read_bytes() == module and not mounted(got.path)
            cache_file = node.cache_dir / "modules" / got.path.name
            assert os.stat(got.path).st_ino == os.stat(cache_file).st_ino  # a hardlink
            assert got.path.stat().st_mode & 0o777 == 0o444
            assert pod.target.stat().st_mode & 0o777 == 0o555
            out = subprocess.run(
                [sys.executable, "-c", NON_ROOT_WRITE, str(pod.target), got.path.name],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout.strip().split("|")  # fmt: skip
            refused = {str(errno.EACCES), str(errno.EPERM)}
            assert all(r.split("=")[1] in refused for r in out), out
            kubelet.unpublish(pod)
            assert not pod.target.exists()
            assert cache_file.read_bytes() == module  # the cache keeps its file
    finally:
        node.cleanup()
