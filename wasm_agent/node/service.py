"""The node service: pod views, the module requests on their sockets, holds and state."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from wasm_agent.cache.model import CachedModule, ModuleRequest
from wasm_agent.cache.module_cache import ModuleCache, ModuleGone, normalize_url
from wasm_agent.core.logs import redact_url
from wasm_agent.fetch.dispatch import fetch_module
from wasm_agent.fetch.errors import DownloadFailure, FetchError
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.node.access import AccessChecker, AccessDenied
from wasm_agent.node.metrics import NODE_REQUESTS, NODE_VOLUMES
from wasm_agent.node.origins import Origins
from wasm_agent.node.protocol import MAX_LINE, Answer, BadRequest, decode_request
from wasm_agent.node.settings import NodeSettings
from wasm_agent.node.state import PodIdentity, VolumeRecord, VolumeStore
from wasm_agent.node.unixsock import bind_unix
from wasm_agent.node.views import View, ViewError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 16  # open node.sock connections per pod
IDLE_TIMEOUT = 300.0  # a connection waiting this long for a request is closed
FETCHES_PER_POD = 2  # downloads (and compiles) one pod may have in progress at once
# All pods together: NodeSettings.max_fetches (--max-fetches, default 16). Waiting requests
# take freed slots in arrival order (asyncio.Semaphore is FIFO).


class PublishError(Exception):
    """A publish or unpublish request that cannot be served; ``code`` is the CSI/gRPC status
    name (INVALID_ARGUMENT, ALREADY_EXISTS, INTERNAL)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NodeService:
    """Serves every pod view of this node; the only writer of the node cache."""

    def __init__(
        self,
        settings: NodeSettings,
        *,
        cache: ModuleCache | None = None,
        access: AccessChecker | None = None,
    ) -> None:
        self.settings = settings
        # a pod's request never uses the node's own docker config (nor its credential helpers)
        # nor the node's TLS client certificates of hosts.toml / certs.d
        fetch = dataclasses.replace(
            settings.fetch, docker_config_dir=None, registry_client_certs=False
        )
        self.cache = cache or ModuleCache(settings.cache, fetch)
        self.access = access or AccessChecker(fetch, settings.access_ttl)
        self.origins = Origins(settings.state_dir / "origins.json", self._in_cache)
        self.store = VolumeStore(settings.state_dir)
        self.volumes: dict[str, VolumeRecord] = {}
        self._servers: dict[str, asyncio.Server] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._held: set[str] = set()
        self._connections: dict[str, int] = {}
        self._node_fetches = asyncio.Semaphore(settings.max_fetches)
        self._pod_fetches: dict[str, asyncio.Semaphore] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore every recorded view: its mounts, its socket, its holds."""
        self.store.ensure()
        for record in self.store.load_all():
            if not Path(record.target_path).parent.is_dir():  # kubelet removed the pod meanwhile
                log.info(
                    "dropping the view of a pod that is gone",
                    extra={"volume_id": record.volume_id, "pod": record.pod.label()},
                )
                self._view(record).remove(ours=False)
                self.store.delete(record)
                continue
            try:
                await self._serve(record)
            except (OSError, PublishError) as error:
                log.error(
                    "cannot restore a view",
                    extra={"volume_id": record.volume_id, "error": str(error)},
                )
                continue
        self._sync_holds()
        NODE_VOLUMES.set(len(self.volumes))
        log.info("node service restored its views", extra={"volumes": len(self.volumes)})

    async def stop(self) -> None:
        """Stop the per-pod sockets (views and holds on disk stay for the next start)."""
        for server in self._servers.values():
            server.close()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
        self.cache.close()

    # -- CSI -------------------------------------------------------------------------------

    def _view(self, record: VolumeRecord) -> View:
        backing = self.settings.state_dir / "views" / record.key
        return View(Path(record.target_path), backing, self.settings.use_mounts)

    def _check_target(self, target_path: str) -> Path:
        if not target_path or not os.path.isabs(target_path):
            raise PublishError("INVALID_ARGUMENT", "target_path must be an absolute path")
        normal = Path(os.path.normpath(target_path))
        root = self.settings.pods_dir
        if root not in normal.parents:
            raise PublishError("INVALID_ARGUMENT", f"target_path must lie under {root}")
        existing = normal.parent
        while not existing.exists():
            existing = existing.parent
        if existing.resolve() != existing:
            raise PublishError("INVALID_ARGUMENT", "target_path must not pass through symlinks")
        return normal

    async def publish(
        self, volume_id: str, target_path: str, pod: PodIdentity, read_only: bool = True
    ) -> VolumeRecord:
        """Create (or confirm) the view of ``volume_id`` at ``target_path``."""
        if not volume_id:
            raise PublishError("INVALID_ARGUMENT", "volume_id is required")
        target = self._check_target(target_path)
        if not target.is_relative_to(self.settings.pods_dir / pod.uid):
            raise PublishError(
                "INVALID_ARGUMENT", "target_path is not in the directory of the pod named by "
                "csi.storage.k8s.io/pod.uid"
            )  # fmt: skip
        async with self._lock(volume_id):
            record = self.volumes.get(volume_id)
            if record is not None and record.target_path != str(target):
                raise PublishError(
                    "ALREADY_EXISTS", f"volume {volume_id} is published at another target_path"
                )
            fresh = record is None
            if record is None:
                record = VolumeRecord(volume_id, str(target), pod, read_only)
                self.store.save(record)
            try:
                await self._serve(record)
            except PublishError:
                if fresh:  # leave nothing behind that a restart would restore
                    self.volumes.pop(volume_id, None)
                    self._view(record).remove()
                    self.store.delete(record)
                raise
            NODE_VOLUMES.set(len(self.volumes))
            log.info("published a view", extra={"volume_id": volume_id, "pod": pod.label()})
            return record

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        """Remove the view of ``volume_id`` and release its holds (idempotent)."""
        if not volume_id:
            raise PublishError("INVALID_ARGUMENT", "volume_id is required")
        async with self._lock(volume_id):
            record = self.volumes.pop(volume_id, None)
            if record is None:
                if target_path:
                    self._check_target(target_path)
                    probe = VolumeRecord(volume_id, target_path, PodIdentity())
                    self._view(probe).remove(ours=False)
                    self.store.delete(probe)
                return
            server = self._servers.pop(volume_id, None)
            if server is not None:
                server.close()
            self._view(record).remove()
            self.store.delete(record)
            self._sync_holds()
            NODE_VOLUMES.set(len(self.volumes))
            log.info("unpublished a view", extra={"volume_id": volume_id})
        self._locks.pop(volume_id, None)
        if record is not None and not any(
            _pod_key(other) == _pod_key(record) for other in self.volumes.values()
        ):  # the pod's last volume: forget its slots (holders keep their reference)
            self._pod_fetches.pop(_pod_key(record), None)

    def _lock(self, volume_id: str) -> asyncio.Lock:
        return self._locks.setdefault(volume_id, asyncio.Lock())

    async def _serve(self, record: VolumeRecord) -> None:
        view = self._view(record)
        try:
            view.create()
            for sha in record.modules:
                source = self.cache.layout.module_path(sha)
                if not view.has(sha) and source.is_file():
                    view.place(sha, source)
            sock = None if record.volume_id in self._servers else bind_unix(view.socket_path)
        except (OSError, ViewError) as error:
            raise PublishError("INTERNAL", f"cannot create the view: {error}") from None
        if sock is not None:

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._connection(record, reader, writer)

            self._servers[record.volume_id] = await asyncio.start_unix_server(
                handle, sock=sock, limit=MAX_LINE
            )
        self.volumes[record.volume_id] = record

    def _sync_holds(self) -> None:
        """Hold each module some view uses, once (one shared flock per module, not per view),
        and release the modules no view uses any more."""
        wanted: dict[str, str] = {}
        for record in self.volumes.values():
            wanted.update(record.modules)
        for sha in self._held - wanted.keys():
            self.cache.release(f"module:{sha}")
            self._held.discard(sha)
        for sha in wanted.keys() - self._held:
            path = self.cache.layout.module_path(sha)
            module = CachedModule(path, sha, wanted[sha], 0, True)
            try:
                self.cache.hold(f"module:{sha}", [module])
            except ModuleGone as error:
                log.warning("a view's module left the cache", extra={"error": str(error)})
                continue
            self._held.add(sha)

    # -- module requests -------------------------------------------------------------------

    async def _connection(
        self, record: VolumeRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        count = self._connections.get(record.volume_id, 0)
        if count >= MAX_CONNECTIONS:  # one pod cannot tie up the node with idle connections
            writer.write(_refuse("unavailable", "too many connections from this pod").encode())
            writer.close()
            return
        self._connections[record.volume_id] = count + 1
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT)
                except asyncio.LimitOverrunError:
                    writer.write(_refuse("bad_request", "request line too long").encode())
                    break
                except (asyncio.IncompleteReadError, TimeoutError):
                    break
                answer = await self.request(record, line)
                writer.write(answer.encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._connections[record.volume_id] -= 1
            writer.close()

    async def request(self, record: VolumeRecord, line: bytes) -> Answer:
        """Serve one request line from ``record``'s pod."""
        try:
            request = decode_request(line)
        except BadRequest as error:
            NODE_REQUESTS.inc(result="bad_request")
            return _refuse("bad_request", str(error))
        try:
            answer = await self._place(record, request)
        except AccessDenied as error:
            NODE_REQUESTS.inc(result="denied")
            return _refuse("denied", str(error), "download_failure")
        except FetchError as error:
            NODE_REQUESTS.inc(result="fetch_failed")
            return _refuse("fetch_failed", str(error), error.result)
        except (OSError, ModuleGone) as error:
            NODE_REQUESTS.inc(result="fetch_failed")
            log.error("cannot place a module", extra={"error": str(error)})
            return _refuse("unavailable", f"the node service cannot place the module: {error}")
        except Exception as error:  # last resort: the pod gets a refusal, not a hang-up
            NODE_REQUESTS.inc(result="fetch_failed")
            log.error(
                "unexpected error serving a pod request",
                extra={"error": f"{type(error).__name__}: {error}"},
            )
            return _refuse("unavailable", "the node service failed unexpectedly (see its log)")
        NODE_REQUESTS.inc(result="placed")
        return answer

    def _in_cache(self, sha256: str) -> bool:
        try:
            return self.cache.layout.module_path(sha256).is_file()
        except ValueError:
            return False

    async def _place(self, record: VolumeRecord, request: ModuleRequest) -> Answer:
        url = normalize_url(request.url)
        await self.access.check(url, request.pull_secret, request.timeout)
        module = self.cache.lookup(request)
        if module is None or not self.origins.known(module.sha256, url):
            # a download (and compile), or a confirming download: bounded per pod and per node
            async with self._fetch_slot(record, url, request) as request:
                if module is None:
                    module = await self.cache.get(request)
                    if not module.hit:  # fetched from this origin with this pod's credentials
                        self.origins.add(module.sha256, url)
                if not self.origins.known(module.sha256, url):
                    await self._confirm_origin(request, url, module)
        if self.volumes.get(record.volume_id) is not record:
            raise ModuleGone("the view was unpublished while the module was fetched")
        name = self._view(record).place(module.sha256, module.path)
        if record.modules.get(module.sha256) != module.url:
            record.modules[module.sha256] = module.url
            self.store.save(record)
        self._sync_holds()
        log.info(
            "placed a module",
            extra={
                "volume_id": record.volume_id,
                "pod": record.pod.label(),
                "url": redact_url(module.url),
                "sha256": module.sha256,
                "hit": module.hit,
            },
        )
        return Answer(ok=True, path=name, sha256=module.sha256, size=module.size, hit=module.hit)

    @contextlib.asynccontextmanager
    async def _fetch_slot(
        self, record: VolumeRecord, url: str, request: ModuleRequest
    ) -> AsyncIterator[ModuleRequest]:
        """Hold one of the pod's download slots (``FETCHES_PER_POD``, counted per pod uid: a
        pod with several volumes has no more) and one of the node's (``--max-fetches``), both
        taken in arrival order. The wait counts against the request's timeout; the request
        yielded carries what is left of it. A wait that outlasts it is a :class:`DownloadFailure`.
        """
        pod_slots = self._pod_fetches.setdefault(
            _pod_key(record), asyncio.Semaphore(FETCHES_PER_POD)
        )
        timeout = request.timeout or self.cache.fetch_settings.default_fetch_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await pod_slots.acquire()
                try:
                    await self._node_fetches.acquire()
                except BaseException:
                    pod_slots.release()
                    raise
        except TimeoutError:
            raise DownloadFailure(
                url,
                f"every download slot of the node service stayed busy for the request's "
                f"timeout ({timeout:g}s; 2 per pod, --max-fetches per node); try again",
            ) from None
        try:
            left = max(deadline - loop.time(), 0.001)
            yield dataclasses.replace(request, timeout=left)
        finally:
            self._node_fetches.release()
            pod_slots.release()

    async def _confirm_origin(self, request: ModuleRequest, url: str, module: CachedModule) -> None:
        """The node cache holds ``module``, but not from this pod's origin: fetch it from the
        pod's own reference with the pod's credentials and place it only if the answer is the
        same module (docs/node.md, "Private modules stay private")."""
        http = url.startswith(("http://", "https://"))
        fetch_request = FetchRequest(
            url=url,
            sha256=module.sha256 if http else None,
            pull_secret=request.pull_secret,
            timeout=request.timeout,
        )

        async def fetch() -> str:
            fetched = await fetch_module(fetch_request, self.cache.fetch_settings)
            return fetched.sha256

        try:
            got = await self.cache.negative.guard(url, request, fetch)
        except FetchError as error:
            log.info(
                "module access denied: its own source did not serve it",
                extra={"url": redact_url(url), "sha256": module.sha256, "error": error.cause},
            )
            raise AccessDenied(
                f"{redact_url(url)} did not serve this module to this pod ({error.cause}); a "
                "module in the node cache is placed only for a pod whose own reference, with "
                "its own credentials, serves it"
            ) from None
        if got != module.sha256:
            raise AccessDenied(
                f"{redact_url(url)} served a module with sha256 {got}, not {module.sha256}"
            )
        self.origins.add(module.sha256, url)
        log.info(
            "confirmed a module's source for a pod",
            extra={"url": redact_url(url), "sha256": module.sha256},
        )


def _pod_key(record: VolumeRecord) -> str:
    """Whose download slots a volume's requests take: its pod's (uid), else the volume's."""
    return record.pod.uid or record.volume_id


def _refuse(reason: str, error: str, result: str = "fetch_failure") -> Answer:
    return Answer(ok=False, reason=reason, result=result, error=error)
