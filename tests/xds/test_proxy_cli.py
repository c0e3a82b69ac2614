"""``wasm-agent proxy`` as a process (flags, environment, drain) and the status server."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.agentproc import ROOT, AgentProcess, free_port
from tests.support.istiod import FakeIstiod
from tests.xds.proxy_helpers import AdsClient
from wasm_agent.agent.status import StatusServer
from wasm_agent.core.metrics import Registry
from wasm_agent.xds.types import CLUSTER_TYPE

pytestmark = pytest.mark.timeout(60)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_help_lists_flags_and_environment_variables() -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = cli("--help")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0
    for text in ("--discovery-address", "--fetch-failure", "WASM_AGENT_TLS_CA", "unix:"):
        assert text in result.stdout
    # the CPU --help costs (wall time on a loaded machine says more about the machine)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 5, cpu


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "needs --tls-ca"),
        (("--plaintext", "--token-file", "/tmp/t"), "--plaintext excludes"),
        (("--tls-ca", "/tmp/ca", "--tls-cert", "/tmp/c"), "go together"),
        (("--plaintext", "--max-message-size", "lots"), "expected a positive size"),
        (("--plaintext", "--fetch-failure", "maybe"), "expected one of nack, deny"),
        (("--plaintext", "--discovery-address", "nocolon"), "--discovery-address"),
        (("--plaintext", "--listen", "nonsense"), "--listen"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = cli(
        *args, "--cache-dir", str(tmp_path), "--status-address", f"127.0.0.1:{free_port()}"
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_configured_from_environment_and_drains_on_sigterm(tmp_path: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))
    with FakeIstiod() as istiod:
        istiod.set_resources(CLUSTER_TYPE, {}, "v1")
        agent = AgentProcess(work, "unused:1")
        env = {
            "WASM_AGENT_DISCOVERY_ADDRESS": istiod.address,
            "WASM_AGENT_LISTEN": f"unix:{agent.socket}",
            "WASM_AGENT_PLAINTEXT": "true",
            "WASM_AGENT_STATUS_ADDRESS": f"127.0.0.1:{agent.status_port}",
            "WASM_AGENT_CACHE_DIR": str(work / "cache"),
            "XDS_HEADER_CLUSTER_ID": "Kubernetes",
        }
        agent.args = [sys.executable, "-m", "wasm_agent", "proxy"]
        agent.env.update(env)
        with agent:
            assert agent.status()[0] == 503

            async def envoy() -> None:
                ads = AdsClient(f"unix:{agent.socket}")
                await ads.request(CLUSTER_TYPE, node=True)
                assert (await ads.read()).version_info == "v1"
                assert agent.status()[0] == 200
                metrics = agent.metrics()
                assert metrics["istio_agent_xds_proxy_requests"] == 1
                assert metrics["istio_agent_xds_proxy_responses"] == 1
                assert "istio_agent_wasm_remote_fetch_count" in agent.status("/metrics")[1]
                assert istiod.open_streams()[-1].metadata["cluster_id"] == "Kubernetes"
                code, seconds = agent.terminate()
                assert code == 0 and seconds < 5, agent.logs()
                with pytest.raises(EOFError):  # the stream was closed cleanly
                    await ads.read()
                await ads.close()

            asyncio.run(envoy())
        assert not agent.socket.exists()


async def test_status_server_routes() -> None:
    state = {"ready": False}
    registry = Registry()
    registry.counter("example_total", "An example.").inc(3)
    server = StatusServer("127.0.0.1:0", lambda: state["ready"], registry)
    await server.start()

    async def get(path: str, method: str = "GET") -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        head, _, body = data.decode().partition("\r\n\r\n")
        return int(head.split(" ")[1]), body

    assert await get("/healthz/ready") == (503, "not ready: no upstream stream to istiod\n")
    state["ready"] = True
    assert (await get("/healthz/ready"))[0] == 200
    status, body = await get("/metrics")
    assert status == 200 and "istio_agent_example_total 3" in body
    assert (await get("/nope"))[0] == 404
    assert (await get("/metrics", "POST"))[0] == 405
    # a client that sends nothing does not block others
    _, idle = await asyncio.open_connection("127.0.0.1", server.port)
    assert (await get("/healthz/ready"))[0] == 200
    idle.close()
    await server.stop()


async def test_listen_on_tcp() -> None:
    from wasm_agent.xds.proxy import ListenSettings, XdsProxy
    from wasm_agent.xds.upstream import Upstream, UpstreamSettings

    with FakeIstiod() as istiod:
        istiod.set_resources(CLUSTER_TYPE, {}, "tcp")
        upstream = Upstream(UpstreamSettings(address=istiod.address, plaintext=True))
        proxy = XdsProxy(ListenSettings(address="127.0.0.1:0"), upstream)
        await proxy.start()
        ads = AdsClient(f"127.0.0.1:{proxy.bound_port}")
        await ads.request(CLUSTER_TYPE, node=True)
        assert (await ads.read()).version_info == "tcp"
        await ads.close()
        await proxy.stop(grace=1)
