"""The negative cache: a module that failed to fetch is not fetched again for a back-off window.

Envoy waits 10 s before it retries a failed remote fetch; without this, every repeated ECDS push
of a bad module (wrong sha256, missing tag, refused credentials) would download it again and
hammer the registry. A failure is remembered per process, in memory, under a key made of the
normalized URL, the expected sha256 and a sha256 of the pull secret (never the secret itself), so
a changed URL, checksum or secret is a different key and is fetched at once. Within the window a
request with the same key raises a copy of the remembered error, with its reason and how long
the back-off still runs, without touching the network (``wasm_cache_negative_hit_count``).

Only failures of the module itself are remembered: a cache that cannot be written
(:class:`~wasm_agent.cache.errors.CacheWriteError`) is a local fault, except a module too large
for ``--cache-max-bytes`` (:class:`~wasm_agent.cache.size_cap.CacheFull`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.cache.size_cap import CacheFull
from wasm_agent.core.logs import redact_url
from wasm_agent.core.metrics import REGISTRY
from wasm_agent.fetch.errors import FetchError
from wasm_agent.fetch.model import normalize_sha256

log = logging.getLogger(__name__)
NEGATIVE_HITS = REGISTRY.counter(
    "wasm_cache_negative_hit_count",
    "Module requests refused from the negative cache (failed recently, not fetched again).",
)
T = TypeVar("T")
MAX_ENTRIES = 4096  # distinct failing (URL, sha256, secret) keys kept; the oldest go first


@dataclass(frozen=True)
class Failure:
    """One remembered failure: the error and when the back-off ends (monotonic seconds)."""

    error: FetchError
    failed_at: float
    until: float


def failure_key(url: str, request: ModuleRequest) -> str:
    """The key of a request: URL, expected sha256 and a hash of the pull secret."""
    secret = request.pull_secret
    secret_hash = hashlib.sha256(secret).hexdigest() if secret is not None else "-"
    checksum = normalize_sha256(request.sha256) or "-"
    return hashlib.sha256(f"{url}\n{checksum}\n{secret_hash}".encode()).hexdigest()


def remembered(error: BaseException) -> bool:
    """Is ``error`` a failure of the module (remembered), not a local fault of the cache?"""
    if not isinstance(error, FetchError):
        return False
    return isinstance(error, CacheFull) or not isinstance(error, CacheWriteError)


class NegativeCache:
    """Failed fetches by key, each refused again until its back-off ends.

    ``backoff`` 0 turns it off. ``clock`` is monotonic seconds (a parameter for tests).
    """

    def __init__(self, backoff: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = backoff
        self._clock = clock
        self._failures: OrderedDict[str, Failure] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def check(self, url: str, request: ModuleRequest) -> None:
        """Raise the remembered error of ``request`` while its back-off runs; else return."""
        if not self._failures:
            return
        key = failure_key(url, request)
        failure = self._failures.get(key)
        if failure is None:
            return
        now = self._clock()
        if now >= failure.until:
            del self._failures[key]
            return
        NEGATIVE_HITS.inc()
        log.info(
            "Wasm module fetch skipped: it failed recently",
            extra={"url": redact_url(url), "retry_in": round(failure.until - now, 3)},
        )
        raise _again(failure, now)

    def remember(self, url: str, request: ModuleRequest, error: BaseException) -> None:
        """Remember ``error`` (if it is a failure of the module) for the back-off window."""
        if self.backoff <= 0 or not remembered(error):
            return
        assert isinstance(error, FetchError)
        now = self._clock()
        key = failure_key(url, request)
        self._failures.pop(key, None)
        self._failures[key] = Failure(error, now, now + self.backoff)
        while len(self._failures) > MAX_ENTRIES:
            self._failures.popitem(last=False)

    async def guard(self, url: str, request: ModuleRequest, fetch: Callable[[], Awaitable[T]]) -> T:
        """Raise the remembered error of ``request``, else run ``fetch()`` and remember its
        failure (the module cache calls this holding the URL's download lock)."""
        self.check(url, request)
        try:
            return await fetch()
        except FetchError as error:
            self.remember(url, request, error)
            raise


def _again(failure: Failure, now: float) -> FetchError:
    """A copy of the remembered error (same class and metric result) saying it is remembered."""
    original = failure.error
    error = type(original).__new__(type(original))  # not copy.copy: __init__ signatures differ
    error.__dict__.update(original.__dict__)
    note = (
        f"failed {now - failure.failed_at:.1f}s ago; not fetched again for another "
        f"{failure.until - now:.1f}s (--fetch-backoff)"
    )
    error.cause = f"{original.cause} ({note})"
    error.args = (f"{error.url}: {error.cause}",)
    error.__traceback__ = None
    return error
