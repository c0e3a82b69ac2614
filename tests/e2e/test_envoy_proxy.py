"""End to end: real Envoy <-> ``wasm-agent proxy`` (a real process) <-> fake istiod.

Envoy connects to the agent over a Unix socket; the fake istiod serves a listener whose HCM has
an ECDS Wasm filter, and the ECDS resource with remote code. Requests through Envoy reach a
local echo server, so the plugin's effect (a response header) is visible in real responses.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import xds_config as xc
from tests.e2e.agentproc import AgentProcess
from tests.support.echo import EchoServer
from tests.support.envoy import EnvoyProcess
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.plugins_wat import HEADER, header_plugin
from tests.support.registry import oci_pusher, oci_registry, unique_repo  # noqa: F401
from tests.support.tls import generate
from tests.support.wasm import sha256_hex
from wasm_agent.xds.types import ECDS_TYPE

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(120)]

V1, V2 = header_plugin("v1"), header_plugin("v2")


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture(scope="module")
def mods() -> Iterator[ModServer]:
    with ModServer() as server:
        yield server


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod() as server:
        yield server


def short_dir(tmp_path: Path) -> Path:
    """Unix socket paths are limited to 107 bytes: work under a short directory."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))


class Mesh:
    """One agent and one Envoy (SotW or Delta) wired to ``istiod``."""

    def __init__(self, workdir: Path, istiod: FakeIstiod, echo: EchoServer, *agent_args: str,
                 delta: bool = False, env: dict[str, str] | None = None,
                 plaintext: bool = True, discovery: str | None = None) -> None:  # fmt: skip
        self.workdir = workdir
        self.istiod = istiod
        self.echo = echo
        self.delta = delta
        args = ("--plaintext", *agent_args) if plaintext else agent_args
        self.agent = AgentProcess(workdir, discovery or istiod.address, *args, env=env)
        self.envoy: EnvoyProcess | None = None

    def start(self) -> Mesh:
        self.agent.start()
        self.start_envoy()
        return self

    def start_envoy(self) -> None:
        bootstrap = xc.bootstrap(str(self.agent.socket), self.echo.port, delta=self.delta)
        self.envoy = EnvoyProcess(bootstrap, self.workdir / f"envoy-{time.monotonic_ns()}")
        self.envoy.start()

    def stop(self) -> None:
        if self.envoy:
            self.envoy.stop()
        self.agent.stop()

    def ecds(self) -> dict:
        assert self.envoy is not None
        try:
            configs = self.envoy.config_dump("ecds_filters").get("configs", [])
        except urllib.error.HTTPError:  # 404 until Envoy has an ECDS config
            return {}
        return configs[0] if configs else {}

    def wait_ecds_version(self, version: str, timeout: float = 60.0) -> dict:
        assert self.envoy is not None
        self.envoy.wait_for(
            lambda: self.ecds().get("version_info") == version, timeout, f"ECDS {version}"
        )
        return self.ecds()

    def get(self, timeout: float = 30.0) -> tuple[int, dict[str, str]]:
        """GET through Envoy's listener (retrying while the listener warms up)."""
        assert self.envoy is not None
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                port = self.envoy.listener_port(xc.LISTENER_NAME)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5) as r:
                    return r.status, {k.lower(): v for k, v in r.headers.items()}
            except urllib.error.HTTPError as http_error:
                return http_error.code, {k.lower(): v for k, v in http_error.headers.items()}
            except (OSError, TimeoutError) as exc:
                error = exc
                time.sleep(0.1)
        raise AssertionError(f"no response through envoy: {error}\n{self.agent.logs()}")

    def header_becomes(self, value: str | None, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            status, headers = self.get()
            seen = (status, headers.get(HEADER))
            if status == 200 and headers.get(HEADER) == value:
                return
            time.sleep(0.1)
        raise AssertionError(f"expected {HEADER}={value}, last saw {seen}\n{self.agent.logs()}")

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def reconnected(istiod: FakeIstiod, before: int):
    """The stream Envoy opened (through the agent) after the first ``before`` ones ended,
    once it has subscribed to ECDS."""

    def newest():
        fresh = [s for s in istiod.streams[before:] if not s.closed and ECDS_TYPE in s.subscribed]
        old_open = [s for s in istiod.streams[:before] if not s.closed]
        return fresh[-1] if fresh and not old_open else None

    return istiod.wait_for(newest, 60, "envoy reconnect")


def wait_acked(istiod: FakeIstiod, nonce: str) -> None:
    """Envoy ACKed the ECDS response ``nonce`` (it reached Envoy and was accepted)."""
    istiod.wait_for(
        lambda: [
            r
            for r in istiod.all_requests(ECDS_TYPE)
            if r.response_nonce == nonce and not r.HasField("error_detail")
        ],
        45,
        f"ACK of {nonce}",
    )


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_http_module_loads_updates_and_bad_sha_nacks(
    tmp_path: Path, istiod: FakeIstiod, echo: EchoServer, mods: ModServer, delta: bool
) -> None:
    url1 = mods.serve(f"/{delta}/v1.wasm", V1)
    url2 = mods.serve(f"/{delta}/v2.wasm", V2)
    xc.serve(istiod, xc.wasm_extension(url1, sha256_hex(V1)), "e1")
    with Mesh(short_dir(tmp_path), istiod, echo, delta=delta) as mesh:
        first = mesh.wait_ecds_version("e1")
        mesh.header_becomes("v1")
        filename = json.dumps(first["ecds_filter"])
        assert "remote" not in filename and "/modules/" in filename

        # the same module again: nothing is downloaded (Envoy ACKs; the config is identical,
        # so Envoy keeps showing e1 in its config dump)
        (nonce,) = xc.serve(istiod, xc.wasm_extension(url1, sha256_hex(V1)), "e2")
        wait_acked(istiod, nonce)
        assert mods.count(f"/{delta}/v1.wasm") == 1

        # a wrong sha256: NACK upstream with that nonce; Envoy's config is unchanged
        (bad_nonce,) = xc.serve(istiod, xc.wasm_extension(url2, "ab" * 32), "e3")
        nack = istiod.wait_for(
            lambda: [r for r in istiod.nacks(ECDS_TYPE) if r.response_nonce == bad_nonce],
            45,
            "NACK",
        )[0]
        assert nack.error_detail.code == 13
        assert "sha" in nack.error_detail.message.lower() or "checksum" in (
            nack.error_detail.message.lower()
        )
        if not delta:
            assert nack.version_info == "e2"  # the last version Envoy ACKed
        time.sleep(0.5)
        assert mesh.ecds() == first  # Envoy's config dump did not change
        mesh.header_becomes("v1")

        # a good update loads
        xc.serve(istiod, xc.wasm_extension(url2, sha256_hex(V2)), "e4")
        mesh.wait_ecds_version("e4")
        mesh.header_becomes("v2")
        metrics = mesh.agent.metrics()
        assert metrics['istio_agent_wasm_config_conversion_count{result="success"}'] >= 3
        assert metrics['istio_agent_wasm_config_conversion_count{result="fetch_failure"}'] >= 1
        assert metrics["istio_agent_wasm_config_conversion_duration_count"] >= 4
        assert metrics['istio_agent_wasm_remote_fetch_count{result="success"}'] == 2
        assert metrics['istio_agent_wasm_remote_fetch_count{result="checksum_mismatched"}'] == 1
        assert metrics["istio_agent_xds_proxy_requests"] >= 6
        assert metrics["istio_agent_xds_proxy_responses"] >= 5


def test_istiod_behind_a_unix_socket_as_with_pilot_agent(
    tmp_path: Path, echo: EchoServer, mods: ModServer
) -> None:
    """Envoy -> wasm-agent -> pilot-agent's XDS socket: the control plane listens on
    ``./etc/istio/proxy/XDS`` only, named relative to the agent's working directory."""
    workdir = short_dir(tmp_path)
    socket = workdir / "etc" / "istio" / "proxy" / "XDS"
    socket.parent.mkdir(parents=True)
    url = mods.serve("/unix/v1.wasm", V1)
    with FakeIstiod(socket=socket) as istiod:
        xc.serve(istiod, xc.wasm_extension(url, sha256_hex(V1)), "u1")
        discovery = "unix:./etc/istio/proxy/XDS"
        with Mesh(workdir, istiod, echo, discovery=discovery) as mesh:
            assert mesh.agent.args[mesh.agent.args.index("--discovery-address") + 1] == discovery
            mesh.wait_ecds_version("u1")
            mesh.header_becomes("v1")
            assert mesh.agent.status()[0] == 200  # ready: the upstream stream is up
            (bad,) = xc.serve(istiod, xc.wasm_extension(url, "ab" * 32), "u2")
            istiod.wait_for(
                lambda: [r for r in istiod.nacks(ECDS_TYPE) if r.response_nonce == bad], 45, "NACK"
            )
        assert istiod.port == 0 and istiod.streams  # every stream came through the socket


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_fail_open_allows_and_pull_secret_never_reaches_envoy(
    tmp_path: Path, istiod: FakeIstiod, echo: EchoServer, mods: ModServer, delta: bool
) -> None:
    secret = '{"auths":{"registry.test":{"auth":"c2VjcmV0LXVzZXI6czNjcjN0LXB3"}}}'
    url = mods.serve(f"/secret-{delta}/v1.wasm", V1)
    env = {
        "ISTIO_META_WASM_IMAGE_PULL_SECRET": secret,
        "ISTIO_META_WASM_IMAGE_PULL_POLICY": "IfNotPresent",
        "KEEP_ME": "1",
    }
    xc.serve(istiod, xc.wasm_extension(url, sha256_hex(V1), env=env), "s1")
    with Mesh(short_dir(tmp_path), istiod, echo, delta=delta) as mesh:
        mesh.wait_ecds_version("s1")
        mesh.header_becomes("v1")
        assert mesh.envoy is not None
        dump = mesh.envoy.admin("/config_dump?include_eds")
        assert "c2VjcmV0LXVzZXI6czNjcjN0LXB3" not in dump and "ISTIO_META" not in dump
        assert "KEEP_ME" in dump
        assert "c2VjcmV0LXVzZXI6czNjcjN0LXB3" not in mesh.agent.logs()

        # fail-open plugin whose module is missing: allow-all RBAC, traffic flows, no NACK
        missing = mods.url("/nothing-here.wasm")
        xc.serve(istiod, xc.wasm_extension(missing, "cd" * 32, fail_open=True), "s2")
        config = mesh.wait_ecds_version("s2")
        assert "rbac" in json.dumps(config).lower()
        mesh.header_becomes(None)
        assert not istiod.nacks(ECDS_TYPE)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_deny_mode_returns_403(
    tmp_path: Path, istiod: FakeIstiod, echo: EchoServer, mods: ModServer, delta: bool
) -> None:
    missing = mods.url("/deny/missing.wasm")
    xc.serve(istiod, xc.wasm_extension(missing, "ef" * 32), "d1")
    args = ("--fetch-failure", "deny")
    with Mesh(short_dir(tmp_path), istiod, echo, *args, delta=delta) as mesh:
        mesh.wait_ecds_version("d1")
        deadline = time.monotonic() + 45
        while mesh.get()[0] != 403 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mesh.get()[0] == 403
        assert not istiod.nacks(ECDS_TYPE)


def test_oci_module_loads(
    tmp_path: Path,
    istiod: FakeIstiod,
    echo: EchoServer,
    oci_registry,  # noqa: F811
    oci_pusher,  # noqa: F811
) -> None:
    repo = unique_repo("e2e")
    pushed = oci_pusher.push_wasm_artifact(repo, "v2", V2)
    url = oci_registry.oci_url(repo, "v2")
    xc.serve(istiod, xc.wasm_extension(url, pushed.hex), "o1")
    env = {"WASM_INSECURE_REGISTRIES": oci_registry.host}
    with Mesh(short_dir(tmp_path), istiod, echo, env=env) as mesh:
        mesh.wait_ecds_version("o1")
        mesh.header_becomes("v2")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_restarts_of_envoy_and_istiod_are_survived(
    tmp_path: Path, istiod: FakeIstiod, echo: EchoServer, mods: ModServer, delta: bool
) -> None:
    url1 = mods.serve(f"/restart-{delta}/v1.wasm", V1)
    url2 = mods.serve(f"/restart-{delta}/v2.wasm", V2)
    xc.serve(istiod, xc.wasm_extension(url1, sha256_hex(V1)), "r1")
    with Mesh(short_dir(tmp_path), istiod, echo, delta=delta) as mesh:
        mesh.wait_ecds_version("r1")
        mesh.header_becomes("v1")
        assert mesh.agent.status()[0] == 200

        # Envoy restarts: it loads the module again from the cache (no download)
        assert mesh.envoy is not None
        mesh.envoy.stop()
        mesh.start_envoy()
        mesh.wait_ecds_version("r1")
        mesh.header_becomes("v1")
        assert mods.count(f"/restart-{delta}/v1.wasm") == 1

        # istiod restarts: Envoy's stream ends, Envoy reconnects through the agent
        streams_before = len(istiod.streams)
        istiod.restart()
        newest = reconnected(istiod, streams_before)
        assert newest.requests[0].HasField("node")
        xc.serve(istiod, xc.wasm_extension(url2, sha256_hex(V2)), "r2")
        mesh.wait_ecds_version("r2")
        mesh.header_becomes("v2")

        # SIGTERM drains: exit 0 within 5 s while Envoy is connected
        code, seconds = mesh.agent.terminate()
        assert code == 0 and seconds < 5, mesh.agent.logs()


def test_mtls_to_istiod_and_garbage_from_istiod(
    tmp_path: Path, echo: EchoServer, mods: ModServer
) -> None:
    tls = generate(tmp_path / "tls")
    url = mods.serve("/mtls/v1.wasm", V1)
    with FakeIstiod(tls, client_auth=True) as istiod:
        xc.serve(istiod, xc.wasm_extension(url, sha256_hex(V1)), "t1")
        args: tuple[str, ...] = ("--tls-ca", str(tls.ca), "--tls-cert", str(tls.client_cert))
        args += ("--tls-key", str(tls.client_key), "--tls-server-name", tls.server_name)
        with Mesh(short_dir(tmp_path), istiod, echo, *args, plaintext=False) as mesh:
            mesh.wait_ecds_version("t1")
            mesh.header_becomes("v1")
            assert istiod.open_streams()[-1].peer_identity == [b"wasm-agent.test"]

            # garbage from istiod: the stream ends with an error, Envoy reconnects and keeps
            # its config; the next push on the new stream works
            before = len(istiod.streams)
            istiod.send_raw(b"\xff\xfe not protobuf")
            reconnected(istiod, before)
            mesh.header_becomes("v1")
            nonces = xc.serve(istiod, xc.wasm_extension(url, sha256_hex(V1)), "t2")
            wait_acked(istiod, nonces[-1])
