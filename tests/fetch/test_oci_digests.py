"""Digests users actually have, and servers that ask to wait.

OCI: ``sha256`` may be the manifest digest or what ``sha256sum plugin.wasm`` prints (checked on
the real ``docker-registry``). HTTP: ``Retry-After`` on 429/503 (a real HTTP server that answers
429/503 first).
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.dispatch import fetch_module
from wasm_agent.fetch.errors import ChecksumMismatch, DownloadFailure
from wasm_agent.fetch.http import fetch_http, retry_after
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.retry import Backoff


def settings_for(registry: Registry | None = None, **kw: Any) -> FetchSettings:
    base: dict[str, Any] = {"default_fetch_timeout": 30.0, "http_max_retries": 3}
    if registry is not None:
        base["insecure_registries"] = frozenset({registry.host})
    base.update(kw)
    return FetchSettings(**base)


# -- OCI: manifest digest or module digest ----------------------------------------------------


@pytest.mark.registry
@pytest.mark.parametrize("layout", ["wasm", "oci", "docker"])
async def test_module_sha256_is_accepted_like_the_manifest_digest(
    oci_registry: Registry, oci_pusher: RawPusher, layout: str
) -> None:
    repo, module = unique_repo(), padded_module(3000, seed=31)
    push = {
        "wasm": oci_pusher.push_wasm_artifact,
        "oci": oci_pusher.push_oci_image,
        "docker": oci_pusher.push_docker_image,
    }[layout]
    pushed = push(repo, "v1", module)
    url = oci_registry.oci_url(repo, "v1")
    settings = settings_for(oci_registry)
    by_manifest = await fetch_module(FetchRequest(url, sha256=pushed.digest), settings)
    by_module = await fetch_module(FetchRequest(url, sha256=sha256_hex(module)), settings)
    assert by_manifest.data == by_module.data == module
    assert by_manifest.checksum == pushed.hex
    assert by_module.checksum == sha256_hex(module)  # what the configured sha256 matched


@pytest.mark.registry
@pytest.mark.parametrize("layout", ["wasm", "oci"])
async def test_mismatch_shows_both_digests_the_artifact_has(
    oci_registry: Registry, oci_pusher: RawPusher, layout: str
) -> None:
    repo, module = unique_repo(), padded_module(2000, seed=32)
    push = oci_pusher.push_wasm_artifact if layout == "wasm" else oci_pusher.push_oci_image
    pushed = push(repo, "v1", module)
    wrong = "ab" * 32
    with pytest.raises(ChecksumMismatch) as info:
        await fetch_module(
            FetchRequest(oci_registry.oci_url(repo, "v1"), sha256=wrong),
            settings_for(oci_registry),
        )
    message = str(info.value)
    assert wrong in message and pushed.digest in message
    assert sha256_hex(module) in message
    assert info.value.result == "checksum_mismatched"
    if layout == "wasm":  # a raw Wasm layer's digest is the module's: no download needed
        assert oci_registry.count_blob_gets(repo) == 0


# -- HTTP: Retry-After --------------------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the deadline test) is not a server problem


class _Busy:
    """A real HTTP server: ``busy`` answers of ``status`` with ``Retry-After: value``, then 200."""

    def __init__(self, body: bytes, status: int, value: str | None, busy: int = 1) -> None:
        self.body, self.status, self.value, self.busy = body, status, value, busy
        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.times.append(time.monotonic())
                if len(outer.times) <= outer.busy:
                    self.send_response(outer.status)
                    if outer.value is not None:
                        self.send_header("Retry-After", outer.value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/m.wasm"

    def __enter__(self) -> _Busy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def module() -> Iterator[bytes]:
    yield padded_module(1000, seed=33)


# The backoff alone would wait ~1 ms: a wait of ~1 s can only come from Retry-After.
FAST = Backoff(initial=0.001, max_interval=0.002)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_honoured(module: bytes, status: int) -> None:
    with _Busy(module, status, "1") as server:
        got = await _fetch_http(server.url)
    assert got == module
    waited = server.times[1] - server.times[0]
    assert 0.9 <= waited < 5.0


async def test_retry_after_http_date_is_honoured(module: bytes) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s away
    with _Busy(module, 503, when) as server:
        got = await _fetch_http(server.url)
    assert got == module
    assert 0.5 <= server.times[1] - server.times[0] < 5.0


async def test_retry_after_past_the_deadline_fails_at_once(module: bytes) -> None:
    with _Busy(module, 429, "120") as server:
        started = time.monotonic()
        with pytest.raises(DownloadFailure) as info:
            await _fetch_http(server.url, timeout=30.0)
    assert time.monotonic() - started < 10.0  # at once: neither 120 s nor the 30 s deadline
    assert len(server.times) == 1
    assert "429" in str(info.value) and "Retry-After: 120s" in str(info.value)
    assert "deadline" in str(info.value)


async def test_429_without_retry_after_uses_the_backoff(module: bytes) -> None:
    with _Busy(module, 429, None, busy=2) as server:
        assert await _fetch_http(server.url) == module
    assert len(server.times) == 3


async def _fetch_http(url: str, timeout: float = 20.0) -> bytes:
    got = await fetch_http(
        FetchRequest(url, timeout=timeout), settings_for(http_max_retries=4), backoff=FAST
    )
    return got.data


def test_retry_after_values() -> None:
    now = 1_000_000.0
    assert retry_after("7", now) == 7.0
    assert retry_after(" 0 ", now) == 0.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30)
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for bad in (None, "", "-1", "soon", "1.5", "Mon, 99 Foo 2026"):
        assert retry_after(bad, now) is None
