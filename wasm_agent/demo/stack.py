"""The demo's moving parts, started and stopped together.

Control plane (our ADS server) <- wasm-agent proxy (in this process, on a Unix socket) <- Envoy
(a subprocess); a module server holding the sample plugin; a backend behind Envoy. Everything
listens on 127.0.0.1 with ports from the OS and lives in one temporary work directory.
:meth:`Stack.stop` stops whatever was started, in reverse order, and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wasm_agent.cache import ModuleCache
from wasm_agent.core.settings import cache_settings_from_env
from wasm_agent.demo.controlplane import ControlPlane
from wasm_agent.demo.envoy import Envoy, bootstrap
from wasm_agent.demo.modserver import HttpServer
from wasm_agent.demo.resources import plugin_wasm, sha256_hex
from wasm_agent.fetch.trust_policy import fetch_settings_from_env
from wasm_agent.xds.converter import WasmConverter
from wasm_agent.xds.proxy import ListenSettings, XdsProxy
from wasm_agent.xds.upstream import Upstream, UpstreamSettings

log = logging.getLogger(__name__)

PLUGIN_PATH = "/plugins/demo-plugin.wasm"
BACKEND_BODY = b"hello from the demo backend\n"


@dataclass(frozen=True)
class FetchRecord:
    """One ``cache.get`` made by the agent while converting an ECDS response."""

    url: str
    expected_sha256: str | None
    sha256: str = ""
    size: int = 0
    path: str = ""
    hit: bool = False
    millis: float = 0.0
    error: str = ""


class RecordingCache:
    """Wraps the agent's :class:`~wasm_agent.cache.ModuleCache` to record every fetch (the
    demo prints them); everything else is delegated unchanged."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.records: list[FetchRecord] = []
        self.changed = asyncio.Event()

    async def get(self, request: Any, progress: Any = None) -> Any:
        started = time.perf_counter()
        try:
            module = await self.cache.get(request, progress)
        except Exception as error:
            cause = getattr(error, "cause", str(error))
            self._add(FetchRecord(request.url, request.sha256, error=cause), started)
            raise
        self._add(
            FetchRecord(
                request.url,
                request.sha256,
                sha256=module.sha256,
                size=module.size,
                path=str(module.path),
                hit=module.hit,
            ),
            started,
        )
        return module

    def _add(self, record: FetchRecord, started: float) -> None:
        millis = (time.perf_counter() - started) * 1000
        self.records.append(replace(record, millis=millis))
        self.changed.set()

    def __getattr__(self, name: str) -> Any:  # hold, release, lookup, purge...
        return getattr(self.cache, name)


class Stack:
    """Every demo process and server; :meth:`start` in order, :meth:`stop` in reverse."""

    def __init__(self, workdir: Path, envoy_path: str) -> None:
        self.workdir = workdir
        self.envoy_path = envoy_path
        self.cache_dir = workdir / "cache"
        self.socket = workdir / "xds.sock"
        self.modules = HttpServer("module server")
        self.backend = HttpServer("backend")
        self.control = ControlPlane()
        self.cache: RecordingCache | None = None
        self.proxy: Any = None
        self.envoy: Envoy | None = None
        self.plugin = b""
        self.plugin_url = ""
        self.plugin_sha256 = ""

    async def start_servers(self) -> None:
        """Module server (with the compiled sample plugin), backend, control plane."""
        self.plugin = plugin_wasm()
        self.plugin_sha256 = sha256_hex(self.plugin)
        await self.modules.start()
        self.plugin_url = self.modules.serve(PLUGIN_PATH, self.plugin, "application/wasm")
        await self.backend.start()
        self.backend.serve("/", BACKEND_BODY, "text/plain")
        await self.control.start()

    async def start_agent(self) -> None:
        """The wasm-agent xDS proxy, in this process, between Envoy and the control plane."""

        self.cache = RecordingCache(
            ModuleCache(cache_settings_from_env(self.cache_dir), fetch_settings_from_env())
        )
        self.proxy = XdsProxy(
            ListenSettings(address=f"unix:{self.socket}"),
            Upstream(UpstreamSettings(address=self.control.address, plaintext=True)),
            WasmConverter(self.cache, "nack"),
        )
        await self.proxy.start()

    async def start_envoy(self) -> None:
        """Envoy, with ADS through the agent's socket."""
        config = bootstrap(self.socket, self.backend.port)
        self.envoy = Envoy(self.envoy_path, config, self.workdir)
        await self.envoy.start()

    async def stop(self) -> None:
        """Stop Envoy, the agent, the control plane and the servers; log, never raise."""
        steps: list[tuple[str, Any]] = []
        if self.envoy is not None:
            steps.append(("envoy", self.envoy.stop))
        if self.proxy is not None:
            steps.append(("agent", lambda: self.proxy.stop(grace=1.0)))
        steps += [
            ("control plane", self.control.stop),
            ("backend", self.backend.stop),
            ("module server", self.modules.stop),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), 10.0)
            except Exception as error:
                log.warning("demo: stopping failed", extra={"part": name, "error": repr(error)})
        if self.cache is not None:
            with contextlib.suppress(Exception):
                self.cache.close()
