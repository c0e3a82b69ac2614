"""Local surfaces of ``wasm-agent proxy`` (a real process): its Unix socket, its listening
ports and every status endpoint.

Must hold: the xDS socket (which streams the whole mesh config) is ``0660`` and a process of
another user outside the agent's group cannot connect; the agent listens on loopback only by
default; the status server answers exactly ``/healthz/ready`` and ``/metrics`` (GET/HEAD),
refuses other methods and paths, drops oversized and stalled requests, and keeps answering
while hostile clients hold connections.
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.faults import Agent
from wasm_agent.agent.commands import proxy as proxy_command
from wasm_agent.agent.status import READ_TIMEOUT

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv under /work may not be readable by nobody


def request(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def listening_inet(pid: int) -> list[tuple[str, int]]:
    """(local address, port) of every TCP socket in LISTEN state that ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = (
            os.readlink(f"/proc/{pid}/fd/{fd}") if os.path.exists(f"/proc/{pid}/fd/{fd}") else ""
        )
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            host_hex, port_hex = local.split(":")
            raw = bytes.fromhex(host_hex)
            if v6:
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                address = socket.inet_ntop(socket.AF_INET6, b"".join(words))
            else:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            found.append((address, int(port_hex, 16)))
    return found


def test_status_address_defaults_to_loopback() -> None:
    """Must hold: without flags or environment, the status server binds 127.0.0.1."""
    parser = argparse.ArgumentParser()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WASM_AGENT_")}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        proxy_command.add_arguments(parser)
        args = parser.parse_args([])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert args.status_address.startswith("127.0.0.1:"), args.status_address


def test_socket_mode_and_other_users(make_agent: Callable[..., Agent], workdir: Path) -> None:
    """Must hold: the xDS socket is 0660 (owner and group), every TCP listener of the agent is
    on loopback, and a process running as ``nobody`` cannot connect to the socket."""
    agent = make_agent()
    assert agent.process is not None
    mode = stat.S_IMODE(agent.socket.stat().st_mode)
    assert mode == 0o660, oct(mode)
    listeners = listening_inet(agent.process.pid)
    assert listeners and all(addr in ("127.0.0.1", "::1") for addr, _ in listeners), listeners
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")  # never in CI: it runs as root
    os.chmod(workdir, 0o755)  # let nobody reach the socket file: only its own mode decides
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1]); print('connected')\n"
        "except PermissionError: print('refused')\n"
    )
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe, str(agent.socket)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == "refused", result.stdout + result.stderr


def test_every_status_endpoint(make_agent: Callable[..., Agent]) -> None:
    """Must hold: ``/healthz/ready`` and ``/metrics`` answer GET and HEAD; POST is 405;
    anything else 404; a request over 8 KiB or a stalled one is dropped; 100 idle connections
    held open do not stop readiness answers."""
    agent = make_agent()
    port = agent.status_port
    ok = request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and b"istio_agent_" in ok
    head = request(port, b"HEAD /healthz/ready HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ") and head.endswith(b"\r\n\r\n")
    assert request(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    for path in (b"/", b"/debug", b"/config_dump", b"/../../etc/passwd", b"/metrics/../x"):
        assert request(port, b"GET " + path + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n") == b""
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        for sock in idle[:50]:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finished
        started = time.monotonic()
        answer = request(port, b"GET /healthz/ready HTTP/1.1\r\n\r\n")
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), answer
        # not queued behind the stalled requests (they hold on until the read timeout); a
        # loaded machine may take a second or two for the answer itself
        assert time.monotonic() - started < READ_TIMEOUT - 1.0
        idle[0].settimeout(15)
        assert idle[0].recv(100) == b""  # the stalled request is dropped (read timeout)
    finally:
        for sock in idle:
            sock.close()
    assert agent.serving()
