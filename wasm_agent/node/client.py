"""The pod side of ``node.sock``: what ``proxy`` and ``prefetch`` use with ``--node-socket``.

:class:`NodeModuleSource` offers the part of :class:`~wasm_agent.cache.ModuleCache` they use
(``get``, ``lookup``, ``hold``, ``release``, ``close``): modules come from the node service, and
paths are inside the pod's view (the directory holding ``node.sock``), where Envoy mounts the
same volume. Failures are :class:`~wasm_agent.fetch.errors.FetchError` subclasses, so the proxy
NACKs with the node's reason; a node service that is down is a ``DownloadFailure`` naming the
socket, and the next request simply connects again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from wasm_agent.cache.model import CachedModule, ModuleRequest
from wasm_agent.fetch.errors import (
    AuthFailure,
    ChecksumMismatch,
    DownloadFailure,
    FetchError,
    ManifestFailure,
)
from wasm_agent.fetch.model import Progress
from wasm_agent.node.protocol import MAX_LINE, Answer, BadRequest, decode_answer, encode_request
from wasm_agent.node.unixsock import short_path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
# Beyond the fetch deadline the node may wait for another download of the module and compile
# it (the cache's compile limit is 120 s).
NODE_MARGIN = 150.0
_BY_RESULT: dict[str, type[FetchError]] = {
    cls.result: cls for cls in (DownloadFailure, ManifestFailure, ChecksumMismatch)
}  # the node's answer carries the failure's metric result label (FetchError.result)


class NodeModuleSource:
    """Asks the node service at ``socket_path`` for modules."""

    def __init__(self, socket_path: str | Path, margin: float = NODE_MARGIN) -> None:
        self.socket_path = Path(socket_path)
        self.view = self.socket_path.parent
        self.margin = margin

    async def ask(self, request: ModuleRequest) -> Answer:
        """Send one request and return the node's answer; raises :class:`DownloadFailure`
        when the node service cannot be reached or answers nonsense."""
        deadline = (request.timeout or DEFAULT_TIMEOUT) + self.margin
        try:
            with short_path(self.socket_path) as name:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(name, limit=MAX_LINE), 10.0
                )
        except (OSError, TimeoutError) as error:
            reason = getattr(error, "strerror", None) or "timed out connecting"
            raise DownloadFailure(
                request.url,
                f"node service unavailable at {self.socket_path}: {reason} "
                "(is the wasm-agent node DaemonSet running on this node?)",
            ) from None
        try:
            writer.write(encode_request(request))
            await writer.drain()
            line = await asyncio.wait_for(reader.readuntil(b"\n"), deadline)
            return decode_answer(line)
        except TimeoutError:
            raise DownloadFailure(
                request.url, f"node service gave no answer within {deadline:g}s"
            ) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            raise DownloadFailure(
                request.url, f"node service closed the connection: {error}"
            ) from None
        except BadRequest as error:
            raise DownloadFailure(request.url, str(error)) from None
        finally:
            writer.close()

    async def get(self, request: ModuleRequest, progress: Progress | None = None) -> CachedModule:
        """The module placed in this pod's view for ``request`` (FetchError on failure)."""
        answer = await self.ask(request)
        if not answer.ok:
            raise _error(request.url, answer)
        path = self.view / answer.path
        log.info(
            "module placed by the node service",
            extra={"path": str(path), "sha256": answer.sha256, "hit": answer.hit},
        )
        if progress is not None:
            progress(answer.size, answer.size)
        return CachedModule(
            path=path, sha256=answer.sha256, url=request.url, size=answer.size, hit=answer.hit
        )

    def lookup(self, request: ModuleRequest) -> CachedModule | None:
        """Always None: only the node service knows (and checks) what a pod may have."""
        return None

    def hold(self, owner: str, modules: Iterable[CachedModule]) -> None:
        """No-op: the node service holds every module placed in a view until unpublish."""

    def release(self, owner: str) -> None:
        """No-op (see :meth:`hold`)."""

    def close(self) -> None:
        """Nothing to release."""

    async def purge_periodically(self) -> None:
        """Nothing to purge here (the node service purges its cache); waits until cancelled."""
        await asyncio.Event().wait()


def _error(url: str, answer: Answer) -> FetchError:
    message = f"node service: {answer.error}"
    if answer.reason == "denied":
        return AuthFailure(url, message)
    if answer.reason == "bad_request":
        return FetchError(url, message)
    return _BY_RESULT.get(answer.result, FetchError)(url, message)
