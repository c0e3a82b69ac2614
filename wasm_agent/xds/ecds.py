"""Runs ECDS conversions for one stream, off the main pump, in istiod's order.

SotW: a newer ECDS response supersedes an older one still converting: the older is cancelled
and its nonce is never answered (istiod only tracks the latest nonce). A conversion that has
finished and is being forwarded is never cancelled, so ECDS responses reach Envoy in the order
istiod sent them. Other types are not held back (see docs/proxy.md, "Ordering").

Delta: every response carries only changes, so none may be dropped: responses are converted one
after the other through a small bounded queue (a full queue holds back the upstream reader).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from wasm_agent.xds import metrics
from wasm_agent.xds.decide import Forward, Nack
from wasm_agent.xds.types import Flavour

log = logging.getLogger(__name__)

DELTA_QUEUE = 2


class Converter(Protocol):
    """Decides what one raw ECDS response becomes (fetching modules as needed)."""

    async def convert(self, raw: bytes, flavour: Flavour, acked_version: str) -> Forward | Nack:
        """:class:`Forward` (bytes for Envoy) or :class:`Nack` (a request for istiod)."""
        ...

    def forwarded(self, action: Forward) -> None:
        """Called once ``action.data`` has been written to Envoy."""
        ...


class _Job:
    def __init__(self) -> None:
        self.converting = True
        self.task: asyncio.Task[None] | None = None


class EcdsSequencer:
    """Per-stream ECDS runner; :meth:`submit` returns quickly (SotW) or waits for room (Delta)."""

    def __init__(
        self,
        converter: Converter,
        flavour: Flavour,
        *,
        forward: Callable[[bytes], Awaitable[None]],
        nack: Callable[[bytes], Awaitable[None]],
        acked_version: Callable[[], str],
        stream_id: int = 0,
    ) -> None:
        self.converter = converter
        self.flavour = flavour
        self._forward = forward
        self._nack = nack
        self._acked_version = acked_version
        self.stream_id = stream_id
        self._last: _Job | None = None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=DELTA_QUEUE)
        self._worker: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.superseded = 0

    async def submit(self, raw: bytes) -> None:
        """Hand over one ECDS response."""
        if self.failure.done():
            return
        if self.flavour is Flavour.DELTA:
            if self._worker is None:
                self._worker = asyncio.create_task(self._work_queue())
            await self._queue.put(raw)
            return
        previous = self._last
        if (
            previous is not None
            and previous.converting
            and previous.task is not None
            and not previous.task.done()
        ):
            previous.task.cancel()
            self.superseded += 1
            log.info("ECDS response superseded", extra={"stream": self.stream_id})
        job = _Job()
        job.task = asyncio.create_task(self._run(job, raw))
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)
        self._last = job

    async def _run(self, job: _Job, raw: bytes) -> None:
        try:
            await self._one(job, raw)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._fail(error)

    async def _work_queue(self) -> None:
        try:
            while True:
                raw = await self._queue.get()
                await self._one(_Job(), raw)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._fail(error)

    async def _one(self, job: _Job, raw: bytes) -> None:
        started = time.perf_counter()
        try:
            result = await self.converter.convert(raw, self.flavour, self._acked_version())
        finally:
            metrics.WASM_CONVERSION_DURATION.observe((time.perf_counter() - started) * 1000)
        job.converting = False  # from here on, never cancelled by a newer response
        async with self._send_lock:  # FIFO: finished conversions go out in arrival order
            if isinstance(result, Nack):
                await self._nack(result.request)
            else:
                await self._forward(result.data)
                self.converter.forwarded(result)

    def _fail(self, error: BaseException) -> None:
        if not self.failure.done():
            self.failure.set_exception(error)

    async def close(self) -> None:
        """Cancel whatever is still converting or waiting."""
        tasks = [*self._tasks, *([self._worker] if self._worker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self.failure.done():
            self.failure.cancel()
