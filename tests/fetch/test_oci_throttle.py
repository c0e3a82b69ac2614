"""OCI registries that throttle: 429 (and 503) with ``Retry-After``, in front of a real registry.

Once a finding (review 3, 13-A): the OCI client never retried a 429 and ignored ``Retry-After``
(only plain HTTP module URLs honoured it). The front below answers ``429`` (or ``503``) with a
``Retry-After`` once on the manifest and once on a blob of an image in the real Debian
``docker-registry``; the pull must succeed after waiting what the registry asked, and fail at
once (saying why) when the wait would pass the fetch deadline.
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.registry_proxy import RegistryProxy
from tests.support.wasm import padded_module
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import DownloadFailure
from wasm_agent.fetch.model import FetchedModule, FetchRequest
from wasm_agent.fetch.oci import fetch_oci
from wasm_agent.fetch.retry import Backoff

pytestmark = pytest.mark.registry

FAST = Backoff(initial=0.005, max_interval=0.02)  # a Retry-After of 1 s is 200x any delay here


@dataclass
class Throttle:
    """Answer ``status`` with ``Retry-After: retry_after`` (None: no header; ``date+N``: the
    HTTP date N seconds after the answer) to the first ``times`` GETs matching ``path_regex``."""

    path_regex: str
    status: int = 429
    retry_after: str | None = "1"
    times: int = 1

    def header(self) -> str | None:
        if self.retry_after is None or not self.retry_after.startswith("date+"):
            return self.retry_after
        ahead = float(self.retry_after.removeprefix("date+"))
        return email.utils.formatdate(time.time() + ahead, usegmt=True)


class ThrottlingProxy(RegistryProxy):
    """A :class:`RegistryProxy` that also throttles; ``seen`` is (time, path, status) per GET."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.throttles: list[Throttle] = []
        self.seen: list[tuple[float, str, int | None]] = []
        self._guard = threading.Lock()
        front = self
        base = self._server.RequestHandlerClass

        class Handler(base):  # type: ignore[valid-type, misc]
            def _handle(self) -> None:
                throttle = front.take_throttle(self.command, self.path)
                if throttle is None:
                    super()._handle()
                    return
                headers = {"content-type": "application/json"}
                value = throttle.header()
                if value is not None:
                    headers["retry-after"] = value
                body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
                self._send(throttle.status, headers, body)

            do_GET = do_HEAD = _handle

        self._server.RequestHandlerClass = Handler

    def take_throttle(self, method: str, path: str) -> Throttle | None:
        with self._guard:
            found = None
            if method == "GET":
                for throttle in self.throttles:
                    if throttle.times > 0 and re.search(throttle.path_regex, path):
                        throttle.times -= 1
                        found = throttle
                        break
            self.seen.append((time.monotonic(), path, found.status if found else None))
            return found

    def gaps_after_throttles(self) -> list[float]:
        """Seconds between each throttled GET and the next GET of the same path."""
        gaps = []
        for i, (when, path, status) in enumerate(self.seen):
            if status is None:
                continue
            later = next((t for t, p, _ in self.seen[i + 1 :] if p == path), None)
            assert later is not None, f"{path} was never retried after HTTP {status}"
            gaps.append(later - when)
        return gaps


@pytest.fixture
def front(oci_registry: Registry) -> Iterator[ThrottlingProxy]:
    with ThrottlingProxy(oci_registry.url) as proxy:
        yield proxy


@pytest.fixture
def image(oci_pusher: RawPusher) -> tuple[str, bytes]:
    repo, module = unique_repo(), padded_module(20_000, seed=57)
    oci_pusher.push_oci_image(repo, "v1", module)
    return repo, module


async def pull(front: ThrottlingProxy, repo: str, timeout: float = 30.0) -> FetchedModule:
    settings = FetchSettings(insecure_registries=frozenset({front.host}), http_max_retries=3,
                             default_fetch_timeout=timeout)  # fmt: skip
    url = f"oci://{front.host}/{repo}:v1"
    return await fetch_oci(FetchRequest(url=url), settings, backoff=FAST)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured_on_manifest_and_blob(
    front: ThrottlingProxy, image: tuple[str, bytes], status: int
) -> None:
    """One throttled manifest GET and one throttled blob GET: both retried after the wait
    (seconds on the manifest, an HTTP date on the blob), and the pull succeeds."""
    repo, module = image
    # the HTTP date has whole seconds: 3 s ahead when answered is a wait of 2-3 s
    front.throttles += [Throttle("/manifests/", status, "1"), Throttle("/blobs/", status, "date+3")]
    got = await pull(front, repo)
    assert got.data == module
    throttled = [(p, s) for _, p, s in front.seen if s is not None]
    assert [s for _, s in throttled] == [status, status]
    assert "/manifests/v1" in throttled[0][0] and "/blobs/sha256:" in throttled[1][0]
    gaps = front.gaps_after_throttles()
    assert len(gaps) == 2
    assert gaps[0] >= 0.95, f"manifest retried {gaps[0]:.3f}s after Retry-After: 1"
    assert gaps[1] >= 1.5, f"blob retried {gaps[1]:.3f}s after a Retry-After date 2-3 s ahead"


async def test_429_without_retry_after_is_retried_with_the_backoff(
    front: ThrottlingProxy, image: tuple[str, bytes]
) -> None:
    repo, module = image
    front.throttles += [Throttle("/manifests/", retry_after=None, times=2),
                        Throttle("/blobs/", retry_after=None)]  # fmt: skip
    got = await pull(front, repo)
    assert got.data == module
    assert sum(1 for _, p, _ in front.seen if "/manifests/v1" in p) == 3
    assert max(front.gaps_after_throttles()) < 5  # the backoff, not a server-given wait


async def test_retry_after_past_the_deadline_fails_at_once(
    front: ThrottlingProxy, image: tuple[str, bytes]
) -> None:
    repo, _ = image
    front.throttles.append(Throttle("/manifests/", retry_after="120"))
    started = time.monotonic()
    with pytest.raises(DownloadFailure) as caught:
        await pull(front, repo, timeout=30.0)
    assert time.monotonic() - started < 20  # did not wait 120 s, nor the 30 s deadline
    cause = caught.value.cause
    assert "fetch deadline of 30s would pass before the next retry" in cause
    assert "HTTP 429" in cause and "Retry-After: 120s" in cause
    assert sum(1 for _, p, _ in front.seen if "/manifests/v1" in p) == 1


async def test_429_exhausts_the_retries(front: ThrottlingProxy, image: tuple[str, bytes]) -> None:
    repo, _ = image
    front.throttles.append(Throttle("/blobs/", retry_after="0", times=100))
    with pytest.raises(DownloadFailure, match=r"HTTP 429 for blob.*after 3 attempts"):
        await pull(front, repo)
    assert sum(1 for _, p, s in front.seen if "/blobs/" in p and s == 429) == 3
