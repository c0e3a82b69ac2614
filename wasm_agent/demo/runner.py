"""The demo's story: start everything, load the plugin, use it, push a bad module, clean up.

Each step prints what happened with the facts behind it (URL, sha256, bytes, fetch time, the
rewritten file, the ACK, the HTTP response, the NACK's ``error_detail``). A step that fails
raises :class:`StepFailed`, naming the step; every process is stopped whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from wasm_agent.core.logs import TextFormatter
from wasm_agent.demo import resources
from wasm_agent.demo.controlplane import Reply
from wasm_agent.demo.stack import FetchRecord, Stack
from wasm_agent.xds.types import ECDS_TYPE, LISTENER_TYPE

log = logging.getLogger(__name__)

GOOD, BAD = "v1", "v2"
WRONG_SHA256 = resources.sha256_hex(b"not the plugin")


class StepFailed(Exception):
    """A demo step did not happen as expected."""


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo."""

    keep_running: bool = False
    timeout: float = 30.0  # for each wait
    verbose: bool = False  # agent logs to stderr instead of a file
    out: TextIO = sys.stdout


class Story:
    """Numbered output lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.number = 0
        self.step = ""

    def begin(self, title: str) -> None:
        self.number += 1
        self.step = title
        self.say(f"{self.number}. {title}")

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def fact(self, name: str, value: object) -> None:
        self.say(f"   {name:<14} {value}")


async def _until(stack: Stack, probe: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll the coroutine function ``probe`` until it returns something truthy; fail at once
    if Envoy has exited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        envoy = stack.envoy
        if envoy is not None and envoy.process is not None and envoy.process.returncode is not None:
            raise StepFailed(f"Envoy exited with status {envoy.process.returncode}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            last = await probe()
            if last:
                return last
        await asyncio.sleep(0.05)
    raise StepFailed(f"{what}: nothing within {timeout:g}s (last seen: {last!r})")


async def _wait_reply(stack: Stack, version: str, timeout: float) -> Reply:
    """The first ACK or NACK of the ECDS response carrying ``version``."""

    async def probe() -> Reply | None:
        for reply in stack.control.replies:
            sent = stack.control.sent.get(reply.nonce)
            if sent == (ECDS_TYPE, version):
                return reply
        return None

    return await _until(stack, probe, timeout, f"Envoy's answer to ECDS {version}")


def _fetch_for(stack: Stack, sha256: str | None) -> FetchRecord:
    assert stack.cache is not None
    for record in reversed(stack.cache.records):
        if record.expected_sha256 == sha256:
            return record
    raise StepFailed(f"the agent made no fetch for sha256 {sha256}")


async def _get(stack: Stack, port: int) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        return await client.get(f"http://127.0.0.1:{port}/")


async def _get_with_header(stack: Stack, port: int, timeout: float) -> httpx.Response:
    async def probe() -> httpx.Response | None:
        response = await _get(stack, port)
        ok = response.status_code == 200 and resources.PLUGIN_HEADER in response.headers
        return response if ok else None

    return await _until(stack, probe, timeout, f"a response with {resources.PLUGIN_HEADER}")


async def tell(stack: Stack, story: Story, timeout: float) -> int:
    """Run the story on a started-from-scratch :class:`Stack`; return Envoy's listener port."""
    story.begin("Start the pieces (all on 127.0.0.1, ports from the OS)")
    await stack.start_servers()
    story.fact("module server", f"{stack.plugin_url}  (sample plugin, {len(stack.plugin)} bytes)")
    story.fact("backend", stack.backend.url("/"))
    story.fact("control plane", f"{stack.control.address}  (ADS, serves LDS + ECDS)")
    await stack.start_agent()
    story.fact("wasm-agent", f"unix:{stack.socket} -> {stack.control.address}")
    story.fact("module cache", stack.cache_dir)
    await stack.control.set_resources(
        LISTENER_TYPE, {resources.LISTENER_NAME: resources.listener()}, "l1"
    )
    extension = resources.wasm_extension(stack.plugin_url, stack.plugin_sha256)
    await stack.control.set_resources(ECDS_TYPE, {resources.FILTER_NAME: extension}, GOOD)
    await stack.start_envoy()
    assert stack.envoy is not None
    story.fact("envoy", f"{stack.envoy.version} pid {stack.envoy.pid}, admin "
                        f"{stack.envoy.admin_address}")  # fmt: skip
    story.fact("envoy binary", stack.envoy.binary)

    story.begin(f"Control plane sends the Wasm filter {resources.FILTER_NAME!r} (ECDS {GOOD})")
    story.fact("remote code", stack.plugin_url)
    story.fact("sha256", stack.plugin_sha256)
    reply = await _wait_reply(stack, GOOD, timeout)

    story.begin("wasm-agent fetches the module, checks its sha256 and compiles it")
    fetched = _fetch_for(stack, stack.plugin_sha256)
    if fetched.error:
        raise StepFailed(f"fetch failed: {fetched.error}")
    story.fact("url", fetched.url)
    story.fact("sha256", f"{fetched.sha256}  (matches the config)")
    story.fact("bytes", fetched.size)
    story.fact("time", f"{fetched.millis:.0f} ms (download, sha256, compile, store)")

    story.begin("wasm-agent rewrites the config: remote code -> local file")
    ecds = await _until(stack, stack.envoy.ecds_config, timeout, "Envoy's ECDS config")
    code = ecds["ecds_filter"]["typed_config"]["config"]["vm_config"]["code"]
    filename = code.get("local", {}).get("filename", "")
    if "remote" in code or filename != fetched.path:
        raise StepFailed(f"Envoy's config was not rewritten to the cached file: {code}")
    story.fact("local.filename", filename)

    story.begin(f"Envoy loads it and ACKs ECDS {GOOD}")
    if reply.nack:
        raise StepFailed(f"Envoy NACKed the good config: {reply.error}")
    story.fact("ACK", f"version_info={reply.version_info} nonce={reply.nonce}")

    story.begin("A request through Envoy")
    envoy = stack.envoy
    assert envoy is not None  # started by the stack
    port = await _until(
        stack, lambda: envoy.listener_port(resources.LISTENER_NAME), timeout, "the listener"
    )
    response = await _get_with_header(stack, port, timeout)
    _show_response(story, port, response)

    story.begin(f"Control plane pushes ECDS {BAD}: same module URL, a WRONG sha256")
    bad = resources.wasm_extension(stack.plugin_url, WRONG_SHA256)
    await stack.control.set_resources(ECDS_TYPE, {resources.FILTER_NAME: bad}, BAD)
    story.fact("sha256", f"{WRONG_SHA256}  (wrong on purpose)")
    reply = await _wait_reply(stack, BAD, timeout)
    failed = _fetch_for(stack, WRONG_SHA256)
    story.fact("wasm-agent", failed.error or "fetched it?!")

    story.begin("wasm-agent NACKs it upstream; Envoy never sees it")
    if not reply.nack:
        raise StepFailed(f"expected a NACK of ECDS {BAD}, got an ACK: {reply}")
    story.fact("NACK", f"nonce={reply.nonce} version_info={reply.version_info} (last good)")
    story.fact("error_detail", reply.error)

    story.begin(f"Envoy keeps serving ECDS {GOOD}")
    ecds_now = await stack.envoy.ecds_config()
    if ecds_now.get("version_info") != GOOD:
        raise StepFailed(f"Envoy's ECDS version is {ecds_now.get('version_info')!r}, not {GOOD}")
    story.fact("config_dump", f"ECDS version_info={GOOD}, same local file")
    response = await _get(stack, port)
    if response.headers.get(resources.PLUGIN_HEADER) != resources.PLUGIN_VALUE:
        raise StepFailed(f"the plugin's header is gone: HTTP {response.status_code}")
    _show_response(story, port, response)
    return port


def _show_response(story: Story, port: int, response: httpx.Response) -> None:
    header = resources.PLUGIN_HEADER
    if response.headers.get(header) != resources.PLUGIN_VALUE:
        raise StepFailed(f"{header} missing or wrong: {dict(response.headers)}")
    story.fact("GET", f"http://127.0.0.1:{port}/")
    story.fact("status", f"{response.status_code} {response.reason_phrase}")
    story.fact("header", f"{header}: {response.headers[header]}  (added by the plugin)")
    story.fact("body", response.text.strip())


@contextlib.contextmanager
def _agent_logs(path: Path | None):
    """Send log records to ``path`` (None: leave logging as it is) for the demo's duration."""
    if path is None:
        yield
        return
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(TextFormatter())
    root.handlers[:] = [handler]
    root.setLevel(min(level or logging.INFO, logging.INFO))  # --log-level debug still works
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
        handler.close()


async def run_demo(envoy_path: str, options: DemoOptions) -> int:
    """The whole demo; 0 if every step happened, 1 otherwise (which step is printed)."""
    story = Story(options.out)
    workdir = Path(tempfile.mkdtemp(prefix="wasm-agent-demo-", dir="/tmp"))
    stack = Stack(workdir, envoy_path)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    interrupted: list[int] = []

    def on_signal(number: int) -> None:
        if not interrupted and task is not None:
            interrupted.append(number)
            task.cancel()

    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, on_signal, number)
    code = 1
    log_path = None if options.verbose else workdir / "agent.log"
    with _agent_logs(log_path):
        try:
            started = time.monotonic()
            port = await tell(stack, story, options.timeout)
            story.say()
            story.say(f"Demo OK in {time.monotonic() - started:.1f} s.")
            code = 0
            if options.keep_running:
                _print_keep_running(story, stack, port, log_path)
                assert stack.envoy is not None and stack.envoy.process is not None
                status = await stack.envoy.process.wait()  # until Ctrl-C / SIGTERM cancels us
                code = 1
                story.say(f"\nEnvoy exited with status {status}; stopping.")
        except asyncio.CancelledError:
            if not interrupted:
                raise
            story.say(f"\nInterrupted ({signal.Signals(interrupted[0]).name}); stopping.")
            code = 130 if code else 0
        except StepFailed as error:
            story.say(f"\nDemo FAILED at step {story.number} ({story.step}): {error}")
        except Exception as error:
            log.exception("demo failed")
            story.say(f"\nDemo FAILED at step {story.number} ({story.step}): {error!r}")
        finally:
            for number in (signal.SIGINT, signal.SIGTERM):  # cleanup is bounded: let it finish
                loop.add_signal_handler(number, lambda: None)
            await stack.stop()
            for number in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(number)
    if code == 1:
        _print_log_tails(workdir)
        story.say(f"Logs and configs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    story.say("Stopped Envoy, wasm-agent, the control plane and the servers.")
    return code


def _print_log_tails(workdir: Path, lines: int = 12) -> None:
    """The end of each log, on stderr (CI keeps the output, not the work directory)."""
    for name in ("agent.log", "envoy.log"):
        path = workdir / name
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {path} (last {len(tail)} lines)", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)


def _print_keep_running(story: Story, stack: Stack, port: int, log_path: Path | None) -> None:
    assert stack.envoy is not None
    story.say()
    story.say("Still running (--keep-running). Try:")
    story.say(f"   curl -i http://127.0.0.1:{port}/")
    story.say(f"   curl -s http://{stack.envoy.admin_address}/config_dump?resource=ecds_filters")
    story.say(f"Envoy log: {stack.envoy.log_path}")
    if log_path is not None:
        story.say(f"wasm-agent log: {log_path}")
    story.say("Press Ctrl-C to stop and clean up.")
