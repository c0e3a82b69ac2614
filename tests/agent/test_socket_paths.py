"""Socket paths and listen addresses at start-up (review 3: 10-A, 10-B, 14-A).

Only a stale socket (nobody accepts on it) is ever removed; anything else at the path is kept
and named (exit 2), a live socket is another process's (exit 1); a listen address that cannot
be bound is one line naming the flag (exit 1), never a traceback. Real processes, real sockets
on 127.0.0.1 and in tmp_path.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.agentproc import free_port
from tests.support.registry import refused_port
from wasm_agent.core.errors import UsageError
from wasm_agent.core.unix_socket import SocketInUse, claim_socket_path
from wasm_agent.node.unixsock import bind_unix

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@contextmanager
def listening_unix(path: Path) -> Iterator[socket.socket]:
    """A live Unix socket at ``path`` (another process's, as far as the agent can tell)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen(1)
        yield sock


def stale_unix(path: Path) -> None:
    """A socket file nobody listens on, as a killed process leaves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


def accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def agent(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=ENV,
    )  # fmt: skip


def proxy_args(tmp_path: Path, upstream: str, listen: str, status: str | None = None) -> list[str]:
    return [
        "proxy", "--plaintext", "--discovery-address", upstream, "--listen", listen,
        "--status-address", status or f"127.0.0.1:{free_port()}",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip


# -- the helper ------------------------------------------------------------------------------


def test_claim_keeps_everything_that_is_not_a_stale_socket(tmp_path: Path) -> None:
    regular = tmp_path / "important.txt"
    regular.write_text("keep me\n")
    link = tmp_path / "link.sock"
    live = tmp_path / "live.sock"
    with listening_unix(live):
        link.symlink_to(live)
        cases = [
            (regular, "is not a socket (a regular file)"),
            (tmp_path, "is not a socket (a directory)"),
            (link, "is not a socket (a symbolic link)"),
        ]
        for path, message in cases:
            with pytest.raises(UsageError, match="--flag x: .*" + re.escape(message)):
                claim_socket_path(path, "--flag x")
        with pytest.raises(SocketInUse, match="in use by another process"):
            claim_socket_path(live, "--flag x")
        assert accepts(live)
    assert regular.read_text() == "keep me\n" and link.is_symlink()
    claim_socket_path(tmp_path / "absent.sock", "--flag x")  # nothing there: nothing to do


def test_claim_removes_only_a_stale_socket_and_the_node_rebinds_it(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    stale_unix(stale)
    claim_socket_path(stale, "--flag x")
    assert not stale.exists()
    stale_unix(stale)  # a node.sock left by a killed node service
    sock = bind_unix(stale)
    try:
        assert accepts(stale)
    finally:
        sock.close()
    planted = tmp_path / "node.sock"
    planted.write_text("not a socket\n")
    with pytest.raises(FileExistsError, match="is not a socket"):
        bind_unix(planted)
    assert planted.read_text() == "not a socket\n"


# -- proxy ---------------------------------------------------------------------------------


def test_proxy_keeps_a_file_at_the_listen_path_and_a_live_socket(tmp_path: Path) -> None:
    regular = tmp_path / "regularfile"
    regular.write_text("data\n")
    with refused_port() as port:
        upstream = f"127.0.0.1:{port}"
        result = agent(*proxy_args(tmp_path, upstream, f"unix:{regular}"), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"--listen unix:{regular}: {regular} exists and is not a socket" in result.stderr
        assert regular.read_text() == "data\n"
        live = tmp_path / "shared.sock"
        with listening_unix(live):
            result = agent(*proxy_args(tmp_path, upstream, f"unix:{live}"), cwd=tmp_path)
            assert result.returncode == 1, result.stderr
            assert "in use by another process" in result.stderr and str(live) in result.stderr
            assert accepts(live), "the first owner lost its socket"
        assert "Traceback" not in result.stderr


def test_a_second_proxy_does_not_steal_the_first_ones_socket(tmp_path: Path) -> None:
    shared = tmp_path / "shared.sock"
    stale_unix(shared)  # left by an earlier, killed run: removed
    with refused_port() as port:
        upstream = f"127.0.0.1:{port}"
        first = subprocess.Popen(
            [sys.executable, "-m", "wasm_agent", *proxy_args(tmp_path, upstream, f"unix:{shared}")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not accepts(shared):
                assert first.poll() is None, first.communicate()[1]
                assert time.monotonic() < deadline, "the first proxy did not listen in 60 s"
                time.sleep(0.1)
            second = agent(*proxy_args(tmp_path, upstream, f"unix:{shared}"), cwd=tmp_path)
            assert second.returncode == 1, second.stderr
            assert "in use by another process" in second.stderr
            assert accepts(shared) and first.poll() is None
        finally:
            first.send_signal(signal.SIGTERM)
            first.communicate(timeout=60)
    assert first.returncode == 0
    assert not shared.exists()  # the first one removed its own socket on exit


def test_listen_and_status_addresses_that_cannot_be_bound(tmp_path: Path) -> None:
    with refused_port() as port, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        upstream = f"127.0.0.1:{port}"
        cases = [
            (proxy_args(tmp_path, upstream, taken), f"--listen {taken}: cannot listen: "),
            (
                proxy_args(tmp_path, upstream, f"unix:{tmp_path}/x.sock", status=taken),
                f"--status-address {taken}: cannot listen: ",
            ),
        ]
        for args, message in cases:
            result = agent(*args, cwd=tmp_path)
            assert result.returncode == 1, result.stderr
            assert message + "address already in use" in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and "[Errno" not in result.stderr


def test_a_listen_path_longer_than_a_unix_socket_allows_is_a_usage_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (120 - len(str(tmp_path))))
    deep.mkdir()
    listen = f"unix:{deep}/agent.sock"
    with refused_port() as port:
        result = agent(*proxy_args(tmp_path, f"127.0.0.1:{port}", listen), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"--listen {listen}: the socket path is" in result.stderr
    assert "at most 107" in result.stderr and "Traceback" not in result.stderr
    assert not (deep / "agent.sock").exists()


def test_the_discovery_address_user_info_is_never_echoed(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path}/x.sock"
    addresses = (
        "u:DISCPASS@127.0.0.1:1", "http://u:DISCPASS@127.0.0.1:1", "u:DISCPASS@h",
        "u:DISC/PASS@127.0.0.1:1", "127.0.0.1:1?token=DISCPASS", "127.0.0.1:1#DISCPASS",
        "unix://relative/x.sock?token=DISCPASS", "127.0.0.1:1;token=DISCPASS",
    )  # fmt: skip
    for address in addresses:
        result = agent(*proxy_args(tmp_path, address, listen), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "DISCPASS" not in result.stderr and "<redacted>" in result.stderr
        assert "PASS" not in result.stderr, result.stderr
        env_form = subprocess.run(
            [sys.executable, "-m", "wasm_agent", "proxy", "--plaintext", "--listen", listen],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**ENV, "WASM_AGENT_DISCOVERY_ADDRESS": address},
        )  # fmt: skip
        assert env_form.returncode == 2, env_form.stderr
        assert "DISCPASS" not in env_form.stderr


# -- node ----------------------------------------------------------------------------------


def node_args(tmp_path: Path, endpoint: Path, *extra: str) -> list[str]:
    pods = tmp_path / "pods"
    pods.mkdir(exist_ok=True)
    return [
        "node", "--csi-endpoint", f"unix:{endpoint}", "--cache-dir", str(tmp_path / "cache"),
        "--kubelet-pods-dir", str(pods), "--node-id", "t", *extra,
    ]  # fmt: skip


def test_node_endpoint_and_directories_are_checked_at_start(tmp_path: Path) -> None:
    important = tmp_path / "imp.txt"
    important.write_text("important\n")
    missing = tmp_path / "no" / "such"
    cases = [
        (node_args(tmp_path, important), 2, f"{important} exists and is not a socket"),
        (node_args(tmp_path, missing / "csi.sock"), 2, f"directory {missing} does not exist"),
        (node_args(tmp_path, tmp_path / "c.sock", "--kubelet-pods-dir", str(missing)), 2,
         f"--kubelet-pods-dir {missing}: no such directory"),
        (node_args(tmp_path, tmp_path / "c.sock", "--registry-config-dir", str(important)), 2,
         f"--registry-config-dir {important}: not a directory"),
    ]  # fmt: skip
    live = tmp_path / "live.sock"
    with listening_unix(live):
        cases.append((node_args(tmp_path, live), 1, "in use by another process"))
        for args, code, message in cases:
            result = agent(*args, cwd=tmp_path)
            assert result.returncode == code, (args, result.stderr)
            assert message in result.stderr, (args, result.stderr)
            assert "Traceback" not in result.stderr
        assert accepts(live)
    assert important.read_text() == "important\n"
    assert not missing.parent.exists(), "the endpoint's directory was created"
    assert not (tmp_path / "c.sock").exists()


def test_node_status_address_that_cannot_be_bound(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        args = node_args(tmp_path, tmp_path / "c.sock", "--status-address", taken)
        result = agent(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"--status-address {taken}: cannot listen: address already in use" in result.stderr
    assert "Traceback" not in result.stderr
