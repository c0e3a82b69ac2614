"""One Envoy ADS stream (SotW or Delta) joined to its own upstream stream to istiod.

Bytes move without queues: the pump that reads one side awaits the write on the other, so
gRPC flow control on a slow side holds back the reader of the other side (backpressure).
Only Envoy's requests (small) are decoded, to learn the node, the type and the ECDS ACK state.
Responses are forwarded as the exact bytes received; only their type URL is read from the wire.
ECDS responses go to an :class:`~wasm_agent.xds.ecds.EcdsSequencer`, off the main pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from wasm_agent.core.logs import scrub
from wasm_agent.xds import metrics
from wasm_agent.xds.decide import acked_ecds_version, with_node
from wasm_agent.xds.ecds import EcdsSequencer
from wasm_agent.xds.types import ECDS_TYPE, Flavour
from wasm_agent.xds.upstream import DELTA_METHOD, SOTW_METHOD, UpstreamError
from wasm_agent.xds.wire import WireError, request_head, response_type_url

if TYPE_CHECKING:
    from wasm_agent.xds.proxy import XdsProxy

log = logging.getLogger(__name__)

_ids = itertools.count(1)
MAX_REPLAY = 64  # requests remembered for re-sending while no response has arrived
DIRECT_WRITE = 64 * 1024  # smaller responses skip the outbox when it is empty
OUTBOX = 2  # responses read from istiod but not yet sent to Envoy, at most
WRITE_SETTLE_SECONDS = 1.0  # a write to Envoy under way may finish this long when a stream ends
REOPEN_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0)  # upstream re-open attempts (about 4.5 s)


class StreamEnd(Exception):
    """Ends the Envoy stream with ``code`` (``None``: a clean end)."""

    def __init__(self, code: grpc.StatusCode | None, details: str, side: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.side = side


class ProxyStream:
    """Pumps one Envoy stream and its upstream stream until either ends."""

    def __init__(
        self,
        proxy: XdsProxy,
        flavour: Flavour,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext[bytes, bytes],
    ) -> None:
        self.id = next(_ids)
        self.proxy = proxy
        self.flavour = flavour
        self.requests = requests
        self.context = context
        self.method = SOTW_METHOD if flavour is Flavour.SOTW else DELTA_METHOD
        self.request_type = (
            discovery_pb2.DiscoveryRequest
            if flavour is Flavour.SOTW
            else discovery_pb2.DeltaDiscoveryRequest
        )
        self.node: base_pb2.Node | None = None  # Envoy sends it on the first request only
        self.ecds_acked_version = ""  # last ECDS version_info Envoy ACKed (SotW NACKs)
        self.replay: list[bytes] | None = []  # requests so far, while no response arrived
        self.responses = 0
        self.upstream_up = False
        self._up_lock = asyncio.Lock()
        self._down_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        # reading the next response overlaps sending the previous one; bounded (backpressure)
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=OUTBOX)
        self._call: grpc.aio.StreamStreamCall[bytes, bytes] | None = None
        self._release: Callable[[], None] = lambda: None
        self.ecds: EcdsSequencer | None = None
        if proxy.converter is not None:
            self.ecds = EcdsSequencer(
                proxy.converter,
                flavour,
                forward=self.write_down,
                nack=self.write_up,
                acked_version=lambda: self.ecds_acked_version,
                stream_id=self.id,
            )

    @property
    def call(self) -> grpc.aio.StreamStreamCall[bytes, bytes]:
        """The open upstream stream (opened by :meth:`run` before the pumps start)."""
        if self._call is None:
            raise StreamEnd(grpc.StatusCode.UNAVAILABLE, "upstream stream not open", "agent")
        return self._call

    # -- writing ---------------------------------------------------------------------------
    async def write_down(self, raw: bytes) -> None:
        """Send one response to Envoy (waits while Envoy is slow)."""
        async with self._down_lock:
            try:
                await self.context.write(raw)
            except Exception as error:  # Envoy went away mid-write
                raise StreamEnd(None, f"write to envoy failed: {error}", "envoy") from None

    async def write_up(self, raw: bytes) -> None:
        """Send one request to istiod; failures surface on the upstream read side."""
        async with self._up_lock:
            metrics.XDS_PROXY_REQUESTS.inc()
            try:
                await self.call.write(raw)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("upstream write failed", extra={"stream": self.id, "error": str(error)})

    # -- pumps -----------------------------------------------------------------------------
    async def _from_envoy(self) -> None:
        async for raw in self.requests:
            try:
                if self.node is None:  # Envoy sends the node on its first request only
                    request = self.request_type.FromString(raw)
                    if request.HasField("node"):
                        self.node = request.node
                head = request_head(raw, self.flavour)
            except (DecodeError, WireError):
                raise StreamEnd(
                    grpc.StatusCode.INVALID_ARGUMENT, "undecodable discovery request", "envoy"
                ) from None
            self.ecds_acked_version = acked_ecds_version(
                head, self.flavour, self.ecds_acked_version
            )
            if self.replay is not None:
                self.replay.append(raw)
                if len(self.replay) > MAX_REPLAY:
                    self.replay = None
            await self.write_up(raw)
        raise StreamEnd(None, "envoy closed its side", "envoy")

    async def _from_istiod(self) -> None:
        attempt = 0
        while True:
            try:
                raw = await self.call.read()
            except grpc.aio.AioRpcError as error:
                if self._may_reopen(error, attempt):
                    await self._reopen(REOPEN_DELAYS[attempt], error.details() or "")
                    attempt += 1
                    continue
                self._count_upstream_end(error.code())
                raise StreamEnd(
                    grpc.StatusCode.UNAVAILABLE,
                    f"upstream: {error.code().name}: {error.details()}",
                    "istiod",
                ) from None
            if not isinstance(raw, bytes):  # grpc.aio.EOF
                self._count_upstream_end(grpc.StatusCode.OK)
                raise StreamEnd(grpc.StatusCode.UNAVAILABLE, "upstream closed the stream", "istiod")
            await self._on_response(raw)

    async def _on_response(self, raw: bytes) -> None:
        metrics.XDS_PROXY_RESPONSES.inc()
        self.responses += 1
        self.replay = None
        self._mark_up()
        try:
            type_url = response_type_url(raw)
        except ValueError as error:
            log.warning("malformed response from istiod", extra={"stream": self.id})
            self._count_upstream_end(grpc.StatusCode.INTERNAL)
            raise StreamEnd(
                grpc.StatusCode.UNAVAILABLE, f"malformed response from istiod: {error}", "istiod"
            ) from None
        if type_url == ECDS_TYPE and self.ecds is not None:
            await self.ecds.submit(raw)
        elif len(raw) < DIRECT_WRITE and self._outbox.empty() and not self._down_lock.locked():
            await self.write_down(raw)  # small and nothing pending: no extra hop (latency)
        else:
            await self._outbox.put(raw)  # waits while OUTBOX responses are not yet sent

    async def _to_envoy(self) -> None:
        while True:
            await self.write_down(await self._outbox.get())

    def _may_reopen(self, error: grpc.aio.AioRpcError, attempt: int) -> bool:
        return (
            self.responses == 0
            and self.replay is not None
            and error.code() == grpc.StatusCode.UNAVAILABLE
            and attempt < len(REOPEN_DELAYS)
            and not self._stop.is_set()
        )

    async def _reopen(self, delay: float, cause: str = "") -> None:
        """Open a new upstream stream and re-send Envoy's requests (node on the first)."""
        metrics.ISTIOD_CONNECTION_FAILURES.inc()
        log.info(
            "istiod unavailable; re-opening the upstream stream",
            extra={
                "stream": self.id,
                "discovery": self.proxy.upstream.settings.address,
                "cause": scrub(cause),
                "retry_in_s": delay,
            },
        )
        async with self._up_lock:
            self._close_call()
            await asyncio.sleep(delay)
            self._open_call()
            for index, raw in enumerate(list(self.replay or ())):
                if index == 0:
                    raw = with_node(raw, self.flavour, self.node)
                try:
                    await self.call.write(raw)
                except Exception:
                    break

    def _mark_up(self) -> None:
        if not self.upstream_up:
            self.upstream_up = True
            self.proxy.stream_up(self)

    async def _watch_headers(self) -> None:
        """Mark the upstream up as soon as istiod sends its response headers."""
        try:
            call = self.call
            await call.initial_metadata()
        except Exception:
            return
        still_current = call is self._call  # not re-opened meanwhile
        if still_current and not call.done():
            self._mark_up()

    def _count_upstream_end(self, code: grpc.StatusCode) -> None:
        if self.responses == 0 and code != grpc.StatusCode.OK:
            metrics.ISTIOD_CONNECTION_FAILURES.inc()
        kind = "cancel" if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED) else "error"
        metrics.ISTIOD_CONNECTION_TERMINATIONS.inc(type=kind)

    # -- lifecycle -------------------------------------------------------------------------
    def _open_call(self) -> None:
        try:
            self._call, self._release = self.proxy.upstream.open(
                self.method, self.context.invocation_metadata()
            )
        except UpstreamError as error:  # unreadable CA, key or token file
            metrics.ISTIOD_CONNECTION_FAILURES.inc()
            log.error("cannot open the upstream stream", extra={"error": str(error)})
            raise StreamEnd(grpc.StatusCode.UNAVAILABLE, str(error), "agent") from None

    def _close_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._release()

    def stop(self) -> None:
        """Ask the stream to end cleanly (agent shutdown)."""
        self._stop.set()

    async def run(self) -> None:
        """Serve the stream; returns (clean end) or aborts Envoy's stream with an error."""
        log.info("envoy stream opened", extra={"stream": self.id, "flavour": self.flavour.value})
        metrics.XDS_STREAMS_ACTIVE.inc()
        end: StreamEnd | None = None
        tasks: list[asyncio.Future[Any]] = []  # pumps (None), stop event (True), failure
        try:
            self._open_call()
            tasks = [
                asyncio.create_task(self._from_envoy()),
                asyncio.create_task(self._from_istiod()),
                asyncio.create_task(self._to_envoy()),
                asyncio.create_task(self._stop.wait()),
            ]
            if self.ecds is not None:
                tasks.append(self.ecds.failure)
            watcher = asyncio.create_task(self._watch_headers())
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            watcher.cancel()
            end = self._outcome(done)
        except StreamEnd as failed:  # the upstream stream could not be opened
            end = failed
        except asyncio.CancelledError:
            metrics.ENVOY_CONNECTION_TERMINATIONS.inc(type="cancel")
            log.info("envoy stream cancelled", extra={"stream": self.id})
            raise
        finally:
            try:
                if self.ecds is not None:
                    await self.ecds.close()
                # A write to Envoy cancelled half-way leaves its operation pending in gRPC, and
                # the handler's final status then fails (TOO_MANY_OPERATIONS): Envoy sees
                # UNAVAILABLE instead of a clean end. Let a write under way finish (briefly).
                settled = False
                with contextlib.suppress(TimeoutError):
                    settled = await asyncio.wait_for(
                        self._down_lock.acquire(), WRITE_SETTLE_SECONDS
                    )
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if settled:
                    self._down_lock.release()
            finally:  # even when the waits above are cancelled in turn: nothing may leak
                for task in tasks:
                    task.cancel()
                self._close_call()
                if self.upstream_up:
                    self.proxy.stream_down(self)
                metrics.XDS_STREAMS_ACTIVE.dec()
        log.info(
            "envoy stream closed",
            extra={"stream": self.id, "side": end.side, "reason": end.details},
        )
        if end.side == "envoy":
            kind = "error" if end.code is not None else "cancel"
            metrics.ENVOY_CONNECTION_TERMINATIONS.inc(type=kind)
        if end.code is not None:
            await self.context.abort(end.code, end.details)

    def _outcome(self, done: set[asyncio.Future[Any]]) -> StreamEnd:
        for task in done:
            error = task.exception() if not task.cancelled() else None
            if isinstance(error, StreamEnd):
                return error
            if error is not None:
                log.error("stream pump failed", exc_info=error, extra={"stream": self.id})
                return StreamEnd(grpc.StatusCode.INTERNAL, f"agent error: {error}", "agent")
        return StreamEnd(None, "agent shutting down", "agent")
