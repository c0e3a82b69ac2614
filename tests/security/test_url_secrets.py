"""Review 4, findings 1, 2 and 5: URL secrets a parser would not see, and invalid ports.

Passwords holding an unencoded ``/``, ``?`` or ``#`` end the URL's authority early for every
URL parser, so the user-info used to be printed (and httpx quoted half of it as the "port");
``;token=`` path parameters were printed and stored. A port above 65535 gave a Python traceback
in the CLI, a dropped connection on the node socket and an ExceptionGroup NACK. Here the real
CLI (``prefetch``, ``check``, ``run``), the real ``proxy`` (its NACK sent to a fake istiod) and
the real node service are given such URLs; every byte they write is searched for the secrets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.node.harness import Kubelet, NodeProcess
from tests.support.faults import Agent, FakeEnvoy, extension, push, wait_nack
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.plugins_wat import header_plugin
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.core.logs import redact_url, scrub
from wasm_agent.fetch.errors import FetchError
from wasm_agent.node.client import NodeModuleSource

ROOT = Path(__file__).resolve().parents[2]
HALF, SECRET = "PASS", "W0RD-z8Qk"  # httpx used to quote HALF as the "port"
TOKEN = "SECRETTOK-5Rv1"
PLANTED = (SECRET, TOKEN, f"{HALF}/", f"{HALF}?", f"{HALF}#", f"'{HALF}'")


def secret_urls(base: str) -> list[str]:
    """``base`` (``http://host:port``) with each unencoded separator in the password."""
    host = base.split("://", 1)[1]
    return [f"http://alice:{HALF}{sep}{SECRET}@{host}/x.wasm" for sep in "/?#"]


def leaks(text: str) -> list[str]:
    return [s for s in PLANTED if s in text]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "wasm_agent", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "prefetch": lambda d: ["prefetch", "--log-level", "debug", "--cache-dir", str(d / "c")],
    "check": lambda d: ["check", "--log-level", "debug", "--cache-dir", str(d / "c")],
    "run": lambda d: ["run", "--log-level", "debug", "--cache-dir", str(d / "c")],
}


def test_redact_url_cuts_every_spelling_of_a_secret() -> None:
    """User-info up to the last ``@`` (not an OCI digest's), queries, fragments, ``;params``."""
    for url in secret_urls("http://127.0.0.1:1"):
        shown = redact_url(url)
        assert shown == "http://<redacted>@127.0.0.1:1/x.wasm", shown
        assert not leaks(scrub(f"error: {url} failed")), scrub(url)
    assert redact_url("http://a:b@h:1/x?t=1#f") == "http://h:1/x?<redacted>"
    assert redact_url(f"http://h/e;token={TOKEN}/p;v=1") == "http://h/e;<redacted>/p;<redacted>"
    assert TOKEN not in scrub(f"url=http://h/e;token={TOKEN}/p;x={TOKEN} ok")
    for address, expected in (  # discovery addresses (HOST:PORT, no scheme)
        (f"127.0.0.1:1?token={TOKEN}", "127.0.0.1:1?<redacted>"),
        (f"127.0.0.1:1;token={TOKEN}", "127.0.0.1:1;<redacted>"),
        (f"a:{HALF}/{SECRET}@127.0.0.1:1", "<redacted>@127.0.0.1:1"),
        ("unix:/run/x.sock", "unix:/run/x.sock"),
    ):
        assert redact_url(address) == expected, address
    digest = "oci://ghcr.io/a/b@sha256:" + "a" * 64
    assert redact_url(digest) == digest and scrub(digest) == digest
    assert redact_url("oci://u:p@ghcr.io/a/b:v1") == "oci://ghcr.io/a/b:v1"
    assert redact_url("http://[::1") == "http://<unparseable url>"  # never raises


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_never_prints_an_unencoded_password(command: str, tmp_path: Path) -> None:
    """Each command refuses the URL with one clear line (exit 1), and prints no secret."""
    with ModServer() as server:
        server.serve("/x.wasm", header_plugin("v1"))
        for url in secret_urls(server.url("").rstrip("/")):
            result = cli(*COMMANDS[command](tmp_path), url, cwd=tmp_path)
            out = result.stdout + result.stderr
            assert result.returncode == 1, out
            assert "Traceback" not in out and "invalid URL" in out, out
            assert not leaks(out), f"{command} leaked {leaks(out)}:\n{out}"
    assert not leaks("".join(p.read_text(errors="replace") for p in tmp_path.rglob("*.json")))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_refuses_a_port_out_of_range(command: str, tmp_path: Path) -> None:
    """``:99999`` (http and oci): exit 1, one line naming the port, no traceback."""
    for url, words in (
        ("http://127.0.0.1:99999/x.wasm", "port 99999 is not in 1-65535"),
        ("oci://127.0.0.1:99999/repo:v1", "invalid registry port 99999"),
    ):
        result = cli(*COMMANDS[command](tmp_path)[:1], "--cache-dir", str(tmp_path / "c"), url,
                     cwd=tmp_path)  # fmt: skip
        out = result.stdout + result.stderr
        assert result.returncode == 1, out
        assert words in out and "Traceback" not in out and "Error:" not in out, out
        assert len(out.strip().splitlines()) <= 8, out  # a report, not a 130-line traceback


def test_a_redirect_to_a_port_out_of_range_is_refused(tmp_path: Path) -> None:
    """The module server redirects to ``:99999``: one clear line, exit 1, no traceback."""
    with ModServer() as server:
        url = server.redirect("/r.wasm", "http://127.0.0.1:99999/x.wasm")
        result = cli("prefetch", "--cache-dir", str(tmp_path / "c"), url, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "port 99999 is not in 1-65535) in a redirect" in out and "Traceback" not in out, out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_redirect_to_a_credentialed_location_httpx_cannot_parse(
    command: str, tmp_path: Path
) -> None:
    """Review 5: a 3xx ``Location`` whose password holds an unencoded '/', '?' or '#' made
    httpx raise "Invalid URL in location header: Invalid port: 'PASS'", printed by every
    command after 5 retries. Now: a fixed message, no retry, no part of the Location."""
    with ModServer() as server:
        for index, location in enumerate(secret_urls(server.url(""))):
            url = server.redirect(f"/r{index}.wasm", location)
            result = cli(*COMMANDS[command](tmp_path), url, cwd=tmp_path)
            out = result.stdout + result.stderr
            assert result.returncode == 1, out
            assert not leaks(out), (leaks(out), out)
            assert "invalid URL in a redirect's Location header" in out, out
            assert server.count(f"/r{index}.wasm") == 1  # final: not retried


def test_path_parameters_are_neither_printed_nor_stored(tmp_path: Path) -> None:
    """``;token=`` on a fetched and on a missing module: not in output, index or ``cache ls``."""
    with ModServer() as server:
        ok = server.serve(f"/p.wasm;token={TOKEN}", header_plugin("v1"))
        missing = server.url(f"/none.wasm;token={TOKEN}")
        cache = str(tmp_path / "c")
        outputs = []
        for argv in (["prefetch", "--cache-dir", cache, ok, missing],
                     ["cache", "ls", "--cache-dir", cache],
                     ["cache", "ls", "--json", "--cache-dir", cache]):  # fmt: skip
            result = cli(*argv, cwd=tmp_path)
            outputs.append(result.stdout + result.stderr)
        assert server.count(f"/p.wasm;token={TOKEN}") == 1  # really fetched
    assert "p.wasm;<redacted>" in outputs[1], outputs[1]
    index = (tmp_path / "c" / "index.json").read_text()
    assert not [out for out in [*outputs, index] if TOKEN in out], outputs


@pytest.mark.timeout(120)
def test_proxy_nack_names_no_password_and_no_exception_group(
    istiod: FakeIstiod,
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
) -> None:
    """The real ``proxy``: ECDS resources with such URLs, or a port out of range, are NACKed
    upstream with a clear reason; the NACKs and the agent's debug log hold no secret."""
    agent = make_agent("--log-level", "debug")
    fake_envoy()
    messages = []
    bad = [*secret_urls("http://127.0.0.1:1"), "http://127.0.0.1:99999/x.wasm"]
    for number, url in enumerate(bad):
        nonces = push(istiod, extension(url, "1" * 64), f"n{number}")
        messages.append(wait_nack(istiod, nonces, agent=agent).error_detail.message)
    assert all("invalid URL" in m for m in messages), messages
    assert "port 99999 is not in 1-65535" in messages[-1]
    assert not [m for m in messages if "ExceptionGroup" in m or leaks(m)], messages
    agent.stop()
    log = agent.log_path.read_text(errors="replace")
    assert "Traceback" not in log and not leaks(log), leaks(log)


async def test_node_refuses_a_bad_url_with_an_answer(tmp_path: Path) -> None:
    """A pod asking for ``:99999`` or an unencoded password gets a refusal, not a hang-up, and
    the node's log holds neither a traceback nor the secret."""
    with NodeProcess(tmp_path / "node") as node, Kubelet(node) as kubelet:
        pod = kubelet.pod("p")
        kubelet.publish(pod)
        source = NodeModuleSource(pod.socket)
        for url in ["http://127.0.0.1:99999/x.wasm", *secret_urls("http://127.0.0.1:1")]:
            with pytest.raises(FetchError) as error:
                await source.get(ModuleRequest(url=url, sha256="2" * 64, timeout=10))
            message = str(error.value)
            assert "invalid URL" in message and "closed the connection" not in message, message
            assert not leaks(message), message
        log = node.logs()
    assert "Traceback" not in log and not leaks(log), log
