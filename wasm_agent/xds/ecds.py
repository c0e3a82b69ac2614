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
from dataclasses import dataclass, field
from typing import Any, Protocol

from wasm_agent.xds import metrics
from wasm_agent.xds.types import Flavour

log = logging.getLogger(__name__)

DELTA_QUEUE = 2


@dataclass
class EcdsResult:
    """What to do with one ECDS response: forward bytes to Envoy or send a NACK upstream."""

    forward: bytes | None = None
    nack: bytes | None = None
    on_forwarded: Callable[[], None] = field(default=lambda: None)


class Converter(Protocol):
    """Turns one raw ECDS response into an :class:`EcdsResult` (fetching modules as needed)."""

    async def convert(self, raw: bytes, flavour: Flavour, acked_version: str) -> EcdsResult: ...


class _Job:
    def __init__(self) -> None:
        self.converting = True
        self.task: asyncio.Task | None = None


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
        self._worker: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.failure: asyncio.Future = asyncio.get_running_loop().create_future()
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
            if result.nack is not None:
                await self._nack(result.nack)
            elif result.forward is not None:
                await self._forward(result.forward)
                result.on_forwarded()

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


def nack_request(flavour: Flavour, type_url: str, nonce: str, version: str, message: str) -> bytes:
    """The NACK istiod receives for an ECDS response the agent rejects (Envoy sees nothing)."""
    from envoy.service.discovery.v3 import discovery_pb2
    from google.rpc import status_pb2

    status = status_pb2.Status(code=13, message=message[:4096])
    if flavour is Flavour.SOTW:
        request = discovery_pb2.DiscoveryRequest(
            version_info=version, type_url=type_url, response_nonce=nonce, error_detail=status
        )
    else:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, response_nonce=nonce, error_detail=status
        )
    return request.SerializeToString()


class WasmConverter:
    """Plan -> fetch every remote module concurrently through the cache -> rewrite or reject."""

    def __init__(self, cache: Any, mode: str = "nack") -> None:
        from wasm_agent.xds import convert

        self._convert = convert
        self.cache = cache
        self.mode = convert.FailureMode(mode)

    async def convert(self, raw: bytes, flavour: Flavour, acked_version: str) -> EcdsResult:
        from envoy.service.discovery.v3 import discovery_pb2
        from google.protobuf.message import DecodeError

        from wasm_agent.xds.wire import response_head

        conv = self._convert
        head = response_head(raw)

        def reject(message: str) -> EcdsResult:
            log.warning("NACK ECDS response", extra={"nonce": head.nonce, "reason": message[:500]})
            nack = nack_request(flavour, head.type_url, head.nonce, acked_version, message)
            return EcdsResult(nack=nack)

        sotw = flavour is Flavour.SOTW
        kind = discovery_pb2.DiscoveryResponse if sotw else discovery_pb2.DeltaDiscoveryResponse
        try:
            message = kind.FromString(raw)
        except DecodeError:
            metrics.WASM_CONVERSION_COUNT.inc(result="unmarshal_failure")
            return reject("ECDS response does not parse")
        if sotw:
            resources = list(message.resources)
            names: list[str] = []
        else:
            resources = [r.resource if r.HasField("resource") else None for r in message.resources]
            names = [r.name for r in message.resources]
        try:
            plan = conv.plan_ecds(resources, names)
        except conv.MalformedResource as error:
            for problem in error.problems:
                metrics.WASM_CONVERSION_COUNT.inc(result=str(problem.result))
            return reject(str(error))
        if not plan.remotes:
            for result in plan.results():
                metrics.WASM_CONVERSION_COUNT.inc(result=str(result))
            return EcdsResult(forward=raw)  # nothing remote: the exact bytes go through
        gets = [self.cache.get(remote.request) for remote in plan.remotes]
        outcomes = await asyncio.gather(*gets, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
        decision = conv.apply_ecds(plan, dict(enumerate(outcomes)), self.mode)
        for result in decision.results:
            metrics.WASM_CONVERSION_COUNT.inc(result=str(result))
        if isinstance(decision, conv.Reject):
            return reject(decision.message)
        for failure in decision.failures:
            log.warning("Wasm plugin replaced by RBAC filter", extra={"reason": failure})
        for index, replacement in decision.replacements.items():
            target = message.resources[index] if sotw else message.resources[index].resource
            target.CopyFrom(replacement)
        data = message.SerializeToString()
        held = [
            (remote.resource_name, outcome)
            for remote, outcome in zip(plan.remotes, outcomes, strict=True)
            if not isinstance(outcome, BaseException)
        ]

        def hold() -> None:
            for name, module in held:
                self.cache.hold(f"ecds:{name}", [module])

        return EcdsResult(forward=data, on_forwarded=hold)
