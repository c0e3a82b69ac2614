"""The Envoy bootstraps of deploy/envoy: accepted by the real Envoy, shaped as the agent expects,
and actually speaking ADS (SotW or delta) over the Unix socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.discovery.v3 import discovery_pb2

from wasm_agent.demo.envoy import find_envoy

ROOT = Path(__file__).resolve().parents[2]
ENVOY_DIR = ROOT / "deploy" / "envoy"
BOOTSTRAPS = {"sotw": "GRPC", "delta": "DELTA_GRPC"}
SOCKET_PATH = "/etc/istio/proxy/XDS"  # Istio's path; the manifests mount its directory
SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


def envoy_binary() -> str:
    return find_envoy()


def load(variant: str) -> dict[str, Any]:
    return yaml.safe_load((ENVOY_DIR / f"bootstrap-{variant}.yaml").read_text())


def clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def test_only_the_two_bootstraps_exist() -> None:
    assert sorted(p.name for p in ENVOY_DIR.glob("*.yaml")) == [
        "bootstrap-delta.yaml",
        "bootstrap-sotw.yaml",
    ]


@pytest.mark.parametrize("variant", sorted(BOOTSTRAPS))
def test_envoy_validates_bootstrap(variant: str) -> None:
    path = ENVOY_DIR / f"bootstrap-{variant}.yaml"
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{path}' OK" in result.stdout + result.stderr


@pytest.mark.parametrize("variant", sorted(BOOTSTRAPS))
def test_ads_goes_to_the_agent_socket(variant: str) -> None:
    bootstrap = load(variant)
    ads = bootstrap["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == BOOTSTRAPS[variant]
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    [service] = ads["grpc_services"]
    xds = clusters(bootstrap)[service["envoy_grpc"]["cluster_name"]]
    [locality] = xds["load_assignment"]["endpoints"]
    [endpoint] = locality["lb_endpoints"]
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": SOCKET_PATH}}
    options = xds["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    for kind in ("cds_config", "lds_config"):
        assert bootstrap["dynamic_resources"][kind] == {"ads": {}, "resource_api_version": "V3"}


@pytest.mark.parametrize("variant", sorted(BOOTSTRAPS))
def test_admin_is_loopback_only(variant: str) -> None:
    bootstrap = load(variant)
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # The only listener open beyond loopback forwards exactly /healthz/ready to admin /ready.
    [listener] = bootstrap["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    [vhost] = hcm["typed_config"]["route_config"]["virtual_hosts"]
    [route] = vhost["routes"]
    assert route["match"] == {"path": "/healthz/ready"}
    assert route["route"]["prefix_rewrite"] == "/ready"
    admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    admin = clusters(bootstrap)[route["route"]["cluster"]]
    [locality] = admin["load_assignment"]["endpoints"]
    [endpoint] = locality["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": admin_port,
    }


def test_variants_differ_only_in_api_type() -> None:
    sotw, delta = load("sotw"), load("delta")
    delta["dynamic_resources"]["ads_config"]["api_type"] = "GRPC"
    assert sotw == delta


# --- the real thing: Envoy speaks ADS over the Unix socket ------------------------------------


class AdsServer:
    """A minimal ADS server (``unix:PATH`` or ``127.0.0.1:0``): answers CDS and LDS once with
    empty responses and records every request of both RPCs."""

    def __init__(self, address: str) -> None:
        self.requests: list[tuple[str, Any]] = []  # (rpc, request)
        self._cond = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._sotw,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._delta,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port(address)
        assert self.port, address

    def __enter__(self) -> AdsServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)

    def _record(self, rpc: str, request: Any) -> None:
        with self._cond:
            self.requests.append((rpc, request))
            self._cond.notify_all()

    def _sotw(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        answered: set[str] = set()
        for n, request in enumerate(requests, 1):
            self._record("sotw", request)
            if request.type_url in (CDS, LDS) and request.type_url not in answered:
                answered.add(request.type_url)
                yield discovery_pb2.DiscoveryResponse(
                    version_info="1", type_url=request.type_url, nonce=str(n)
                )

    def _delta(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        answered: set[str] = set()
        for n, request in enumerate(requests, 1):
            self._record("delta", request)
            if request.type_url in (CDS, LDS) and request.type_url not in answered:
                answered.add(request.type_url)
                yield discovery_pb2.DeltaDiscoveryResponse(
                    system_version_info="1", type_url=request.type_url, nonce=str(n)
                )

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[str, Any]]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.requests) >= count, timeout)
            assert ok, f"only {len(self.requests)} xDS requests: {self.requests}"
            return list(self.requests)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def localize(bootstrap: dict[str, Any], socket_path: str) -> int:
    """Point the bootstrap at a test socket and free loopback ports; return the readiness
    listener's port."""
    admin_port, ready_port = free_port(), free_port()
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    by_name = clusters(bootstrap)
    ads = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
    xds = by_name[ads["envoy_grpc"]["cluster_name"]]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["pipe"]["path"] = socket_path
    admin = by_name["envoy-admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    admin["endpoint"]["address"]["socket_address"]["port_value"] = admin_port
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=ready_port)
    return ready_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def wait_until_ok(url: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    status, body = get(url)
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        status, body = get(url)
    assert status == 200, f"{url}: {status} {body}"
    return body.strip()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    # A short directory: Unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="wa-xds-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def envoy_command(variant: str, work: Path, socket_path: str) -> tuple[list[str], int]:
    bootstrap = load(variant)
    ready_port = localize(bootstrap, socket_path)
    config = work / "envoy.yaml"
    config.write_text(yaml.safe_dump(bootstrap))
    command = [
        envoy_binary(),
        "-c", str(config),
        "--concurrency", "1",
        "--use-dynamic-base-id",
        "--log-level", "info",
    ]  # fmt: skip
    return command, ready_port


def check_ads_session(ads: AdsServer, variant: str, ready_port: int, log: Path) -> None:
    """CDS first (with the node), answered; then the CDS ACK and the LDS request, without the
    node (set_node_on_first_message_only); LDS answered; Envoy becomes ready."""
    try:
        requests = ads.wait_for(3)
    except AssertionError:
        raise AssertionError(log.read_text()[-3000:]) from None
    assert {rpc for rpc, _ in requests} == {variant}
    first = requests[0][1]
    assert first.type_url == CDS
    assert first.node.id == load(variant)["node"]["id"]
    assert all(not r.HasField("node") for _, r in requests[1:])
    assert LDS in {r.type_url for _, r in requests}
    assert wait_until_ok(f"http://127.0.0.1:{ready_port}/healthz/ready") == "LIVE"
    # Nothing but /healthz/ready is reachable through the readiness listener.
    assert get(f"http://127.0.0.1:{ready_port}/config_dump")[0] == 404


@pytest.mark.envoy
@pytest.mark.parametrize("variant", sorted(BOOTSTRAPS))
def test_envoy_speaks_ads_over_the_unix_socket(variant: str) -> None:
    with workdir() as work:
        socket_path = str(work / "XDS")
        command, ready_port = envoy_command(variant, work, socket_path)
        log = work / "envoy.log"
        with AdsServer(f"unix:{socket_path}") as ads, running(command, log):
            check_ads_session(ads, variant, ready_port, log)


@pytest.mark.envoy
@pytest.mark.parametrize("variant", sorted(BOOTSTRAPS))
def test_envoy_reaches_the_control_plane_through_wasm_agent(variant: str) -> None:
    """The deployed pair: Envoy with the bootstrap -> `wasm-agent proxy --listen unix:...`
    (the sidecar manifest's flags, plain text upstream) -> an ADS server standing for istiod."""
    with workdir() as work, AdsServer("127.0.0.1:0") as istiod:
        socket_path = str(work / "XDS")
        status_port = free_port()
        agent = [
            sys.executable, "-m", "wasm_agent", "proxy",
            f"--discovery-address=127.0.0.1:{istiod.port}",
            "--plaintext",
            f"--listen=unix:{socket_path}",
            f"--cache-dir={work / 'cache'}",
            f"--status-address=127.0.0.1:{status_port}",
            "--fetch-failure=nack",
        ]  # fmt: skip
        command, ready_port = envoy_command(variant, work, socket_path)
        log = work / "agent.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with running(agent, log, env) as process:
            deadline = time.monotonic() + 30
            while not Path(socket_path).exists():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            with running(command, work / "envoy.log"):
                check_ads_session(istiod, variant, ready_port, log)
                assert wait_until_ok(f"http://127.0.0.1:{status_port}/healthz/ready") != ""
