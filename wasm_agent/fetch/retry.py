"""Retry rules for module downloads (Istio's ``HTTPFetcher``), with an injectable backoff.

Up to ``max_attempts`` attempts in total; an attempt signals a retryable failure by raising
:class:`Retryable`; anything else propagates at once. When no attempt succeeds, the one error
is :class:`~wasm_agent.fetch.errors.RetriesExhausted` (a ``DownloadFailure``), for HTTP and
OCI alike. Between attempts the delay grows
exponentially (500 ms, x1.5, +-50 % jitter, capped at 60 s) and never sleeps past the deadline.
A 429 or 503 answer's ``Retry-After`` (seconds or an HTTP date) replaces the next delay
(:class:`ServerBackoff`), for module URLs and registries alike; a wait that would pass the
deadline ends the retries at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from wasm_agent.fetch.errors import RetriesExhausted

__all__ = [
    "DEFAULT_BACKOFF",
    "RETRY_AFTER_STATUSES",
    "Backoff",
    "Deadline",
    "RetriesExhausted",
    "Retryable",
    "ServerBackoff",
    "retry_after",
    "retryable_answer",
    "retryable_status",
    "with_retries",
]

T = TypeVar("T")

# 5xx statuses that retrying cannot fix.
NOT_RETRYABLE_5XX = frozenset({501, 505, 511})


# Statuses whose Retry-After header is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})


def retryable_status(status: int) -> bool:
    """True for 5xx statuses other than 501, 505 and 511."""
    return status >= 500 and status not in NOT_RETRYABLE_5XX


def retryable_answer(status: int) -> bool:
    """True for a status worth another attempt: 429 (throttled) or a retryable 5xx."""
    return status == 429 or retryable_status(status)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date); None if bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC per RFC 5322
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter (the shape of Go's ``backoff.ExponentialBackOff``)."""

    initial: float = 0.5
    multiplier: float = 1.5
    jitter: float = 0.5
    max_interval: float = 60.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def delays(self) -> Iterator[float]:
        """Successive randomized delays in seconds."""
        interval = self.initial
        while True:
            spread = self.jitter * interval
            yield interval - spread + self.rand() * 2 * spread
            interval = min(interval * self.multiplier, self.max_interval)


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True)
class ServerBackoff(Backoff):
    """``base``'s delays, except where the server said ``Retry-After``: an attempt that got
    one appends the seconds to ``hints``, and the next delay is that wait instead."""

    base: Backoff = field(default_factory=lambda: DEFAULT_BACKOFF)
    hints: list[float] = field(default_factory=list, compare=False)

    def delays(self) -> Iterator[float]:
        base = self.base.delays()
        while True:
            delay = next(base)
            yield self.hints.pop() if self.hints else delay


class Deadline:
    """A point in time (monotonic clock) that a whole operation must finish by."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0


class Retryable(Exception):
    """Raised by an attempt whose failure may be retried; ``error`` is what to report.

    Control flow inside :func:`with_retries` only: it never leaves that function.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(str(error))


async def with_retries(
    attempt: Callable[[int], Awaitable[T]],
    *,
    max_attempts: int,
    deadline: Deadline,
    backoff: Backoff = DEFAULT_BACKOFF,
    on_retry: Callable[[int, Exception, float], None] | None = None,
    url: str = "",
) -> T:
    """Run ``attempt(n)`` (n = 1, 2, ...) until it returns, raises a non-:class:`Retryable`
    error, or ``max_attempts`` attempts failed (:class:`RetriesExhausted`).

    Sleeps the backoff delay between attempts, except when the delay would reach past
    ``deadline``: then it stops at once (``RetriesExhausted.deadline`` is True). ``url`` is the
    download the error names.
    """
    delays = backoff.delays()
    attempts = max(1, max_attempts)
    for number in range(1, attempts + 1):
        try:
            return await attempt(number)
        except Retryable as failure:
            last = failure.error
        if number == attempts:
            break
        delay = next(delays)
        if delay >= deadline.remaining():
            raise RetriesExhausted(url, last, number, deadline=deadline.seconds)
        if on_retry is not None:
            on_retry(number, last, delay)
        await asyncio.sleep(delay)
    raise RetriesExhausted(url, last, attempts)
