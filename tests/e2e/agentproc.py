"""Run ``wasm-agent proxy`` as a real process for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal, overload

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AgentProcess:
    """``wasm-agent proxy`` listening on a Unix socket in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        discovery: str,
        *extra: str,
        env: dict[str, str] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.socket = workdir / "xds.sock"
        self.status_port = free_port()
        self.cache_dir = cache_dir or workdir / "cache"
        self.log_path = workdir / "agent.log"
        self.args = [
            sys.executable, "-m", "wasm_agent", "proxy",
            "--discovery-address", discovery,
            "--listen", f"unix:{self.socket}",
            "--cache-dir", str(self.cache_dir),
            "--status-address", f"127.0.0.1:{self.status_port}",
            "--log-level", "info",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> AgentProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited {self.process.returncode}:\n{self.logs()}")
            if self.socket.exists() and self.status(allow_error=True) is not None:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"agent did not start in {timeout}s:\n{self.logs()}")

    @overload
    def status(self, path: str = ..., allow_error: Literal[False] = ...) -> tuple[int, str]: ...
    @overload
    def status(self, path: str = ..., *, allow_error: bool) -> tuple[int, str] | None: ...

    def status(
        self, path: str = "/healthz/ready", allow_error: bool = False
    ) -> tuple[int, str] | None:
        """(status code, body) of the status server; None if it does not answer and
        ``allow_error`` (otherwise the error is raised)."""
        try:
            url = f"http://127.0.0.1:{self.status_port}{path}"
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            if allow_error:
                return None
            raise

    def metrics(self) -> dict[str, float]:
        values = {}
        for line in self.status("/metrics")[1].splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; return (exit code, seconds it took)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
