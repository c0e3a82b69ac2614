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
from typing import IO, Literal, overload

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

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
        )

    def _gave_up(self) -> None:
        """Called when the agent did not come up in time (before the error is raised)."""

    def start(self, timeout: float = 60.0) -> AgentProcess:
        """Start the agent and wait until its socket and status server answer. The status port
        comes from :func:`free_port`, so another process can take it before the agent binds
        it: then the agent is started again on another port (at most twice)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self.process = self._spawn(log)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    if attempt < 2 and self._status_port_taken(offset):
                        self._new_status_port()
                        break
                    raise RuntimeError(f"agent exited {self.process.returncode}:\n{self.logs()}")
                if self.socket.exists() and self.status(allow_error=True) is not None:
                    return self
                time.sleep(0.05)
            else:
                self._gave_up()
                raise RuntimeError(f"agent did not start in {timeout}s:\n{self.logs()}")
        raise AssertionError("unreachable")

    def _status_port_taken(self, offset: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        return f"127.0.0.1:{self.status_port}: cannot listen: address already in use" in text

    def _new_status_port(self) -> None:
        """Move the status server to another free port (in the flags and the environment)."""
        old, self.status_port = f"127.0.0.1:{self.status_port}", free_port()
        new = f"127.0.0.1:{self.status_port}"
        self.args = [new if a == old else a.replace(f"={old}", f"={new}") for a in self.args]
        self.env = {k: new if v == old else v for k, v in self.env.items()}

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
