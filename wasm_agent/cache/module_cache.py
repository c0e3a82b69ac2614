"""ModuleCache: modules by content, shared safely by every process using one directory."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path

from wasm_agent.cache import store
from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.index import Index, IndexData, UrlRecord
from wasm_agent.cache.integrity import Prover, check_tree
from wasm_agent.cache.layout import CacheLayout
from wasm_agent.cache.locks import FileLock, LockTimeout, hold_file, in_use
from wasm_agent.cache.metrics import CACHE_ENTRIES, CACHE_LOOKUPS
from wasm_agent.cache.model import CachedModule, CacheEntry, ModuleRequest
from wasm_agent.cache.negative import NegativeCache
from wasm_agent.cache.policy import Decision, decide
from wasm_agent.cache.purge import purge_expired
from wasm_agent.cache.size_cap import SizeCap, cache_bytes
from wasm_agent.core.errors import WasmAgentError
from wasm_agent.core.logs import redact_url
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.fetch.checks import ValidateSettings, validate_module
from wasm_agent.fetch.dispatch import fetch_module
from wasm_agent.fetch.dispatch import normalize_url as _normalize
from wasm_agent.fetch.errors import DownloadFailure, FetchError, InvalidModule
from wasm_agent.fetch.model import FetchedModule, FetchRequest, Progress, normalize_sha256
from wasm_agent.fetch.reference import InvalidReference, parse_reference

log = logging.getLogger(__name__)

Fetcher = Callable[[FetchRequest, FetchSettings, Progress | None], Awaitable[FetchedModule]]
Validator = Callable[[Path, ValidateSettings | None], Awaitable[None]]
TOUCH_INTERVAL = 60.0  # a hit rewrites the index at most this often per URL
LOCK_WAIT_MARGIN = 120.0  # beyond the fetch deadline: the holder may still be compiling


class ModuleGone(WasmAgentError, LookupError):
    """A module to hold is no longer in the cache (purged or removed by hand)."""


class ModuleCache:
    """Fetch-once, content-addressed module cache (see docs/design.md)."""

    def __init__(
        self,
        settings: CacheSettings,
        fetch_settings: FetchSettings,
        *,
        fetcher: Fetcher | None = None,
        validator: Validator | None = None,
        validate_settings: ValidateSettings | None = None,
    ) -> None:
        self.settings = settings
        self.fetch_settings = fetch_settings
        self.layout = CacheLayout(settings.directory)
        self.index = Index(self.layout)
        self._fetcher = fetcher
        self._validator = validator
        self._validate_settings = validate_settings
        self._holds: dict[str, list[int]] = {}
        self._ready = False
        self._prover = Prover(max_bytes=fetch_settings.max_binary_size)
        self.negative = NegativeCache(settings.fetch_backoff)  # docs/registries.md
        self.size_cap = SizeCap(self.layout, self.index, settings.max_bytes)  # docs/cache.md

    # -- lookups ---------------------------------------------------------------------------

    def _ensure(self) -> None:
        if not self._ready:
            check_tree(self.layout)  # InsecureCache: others may write it
            self.layout.ensure()
            store.clean_stale_temps(self.layout)
            cache_bytes(self.layout)  # the wasm_cache_bytes gauge from the start
            self._ready = True

    def _cached_file(self, url: str, data: IndexData) -> Callable[[str], str | None]:
        oci = url.startswith("oci://")

        def cached(checksum: str) -> str | None:
            # an OCI digest names a module file only through an authenticated index entry
            sha = data.digests.get(checksum) if oci else data.file_sha256(checksum)
            if sha is None:
                return None
            try:
                return sha if self.layout.module_path(sha).is_file() else None
            except ValueError:
                return None

        return cached

    def _decide(self, request: ModuleRequest, url: str, key: str, data: IndexData) -> Decision:
        """The pull-policy decision for ``url``, named ``key`` in the index (its url_key)."""
        return decide(
            url,
            normalize_sha256(request.sha256),
            request.pull_policy,
            request.resource_name,
            request.resource_version,
            data.urls.get(key),
            self._cached_file(url, data),
        )

    def lookup(self, request: ModuleRequest) -> CachedModule | None:
        """Serve ``request`` from the cache without any network or event loop, else None.

        Counts ``wasm_cache_lookup_count{hit="true"}`` on a hit only; :meth:`get` counts misses.
        """
        self._ensure()
        url = normalize_url(request.url)
        found = self._serve_cached(request, url, self.index.load())
        if found is not None:
            CACHE_LOOKUPS.inc(hit="true")
        return found

    def _serve_cached(
        self, request: ModuleRequest, url: str, data: IndexData
    ) -> CachedModule | None:
        key = self.index.url_key(url)  # once per hit: a credentialed URL costs a MAC
        decision = self._decide(request, url, key, data)
        if decision.cached is None:
            return None
        checksum = decision.checksum or decision.cached
        if not self._trusted(url, checksum, data):  # fetch again: the fetch verifies
            return None
        path = self.layout.module_path(decision.cached)
        st = self._prover.prove(path, decision.cached)  # the hand-over proof
        if st is None:
            return None
        if time.time() - st.st_mtime > TOUCH_INTERVAL:  # mtime is the last use (purge)
            if not store.touch(path):
                return None
            st = self._prover.prove(path, decision.cached)  # touching moved the ctime
            if st is None:
                return None
        self._remember(request, url, key, data, checksum, decision.cached, defer=True)
        return CachedModule(
            path=path, sha256=decision.cached, url=key, size=st.st_size, hit=True,
            checksum=checksum, oci_digest=_digest(checksum, decision.cached),
        )  # fmt: skip

    def _trusted(self, url: str, checksum: str, data: IndexData) -> bool:
        """May a cached module be served under the verify policy without verifying again?

        Yes without a policy, for non-OCI URLs, and when the repository's rule requires no
        signature; else only if one of the rule's keys verified this digest in this repository.
        """
        policy = self.fetch_settings.verify_policy
        if policy is None or not url.startswith("oci://"):
            return True
        name = _oci_name(url)
        rule = policy.rule_for(name) if name is not None else None
        if rule is None:
            return False
        if not rule.required:
            return True
        verified = data.signatures.get(f"{name}@sha256:{checksum}", ())
        return not rule.fingerprints.isdisjoint(verified)

    def _remember(
        self,
        request: ModuleRequest,
        url: str,
        key: str,
        data: IndexData,
        checksum: str,
        sha256: str,
        verified_keys: tuple[str, ...] = (),
        *,
        defer: bool = False,
    ) -> None:
        """Record URL -> checksum (and this resource's version) unless nothing changed, and
        the keys that verified the module's signature. ``key``: how ``url`` is named in the
        index (:meth:`Index.url_key`). ``defer``: inside an event loop, batch
        the write with the other hits of this loop iteration (one index write, not one each)."""
        now = time.time()
        name = _oci_name(url) if verified_keys else None
        old = data.urls.get(key)
        if (
            name is None
            and old is not None
            and (old.checksum, old.sha256) == (checksum, sha256)
            and old.resource_versions.get(request.resource_name) == request.resource_version
            and now - old.last_used < TOUCH_INTERVAL
            and (checksum == sha256 or data.digests.get(checksum) == sha256)
        ):
            return

        def change(current: IndexData) -> None:
            rec = current.urls.get(key)
            if rec is None or (rec.checksum, rec.sha256) != (checksum, sha256):
                versions = dict(rec.resource_versions) if rec else {}
                rec = UrlRecord(checksum=checksum, sha256=sha256, resource_versions=versions)
                current.urls[key] = rec
            rec.resource_versions[request.resource_name] = request.resource_version
            rec.last_used = now
            if checksum != sha256:
                current.digests[checksum] = sha256
            if name is not None:
                signed = f"{name}@sha256:{checksum}"
                known = current.signatures.get(signed, [])
                current.signatures[signed] = sorted(set(known) | set(verified_keys))

        self.index.record(change, defer=defer)

    def flush(self) -> None:
        """Write the index changes deferred by cache hits."""
        self.index.flush()

    # -- fetching --------------------------------------------------------------------------

    async def get(self, request: ModuleRequest, progress: Progress | None = None) -> CachedModule:
        """The module for ``request``: from the cache per the pull policy, else fetched,
        verified, compiled and stored. Raises :class:`FetchError` subclasses."""
        found = self.lookup(request)
        if found is not None:
            return found
        CACHE_LOOKUPS.inc(hit="false")
        self.layout.ensure()  # cheap next to a download; recreates a directory removed by hand
        url = normalize_url(request.url)
        timeout = request.timeout or self.fetch_settings.default_fetch_timeout
        lock = FileLock(self.layout.lock_path(url), timeout=timeout + LOCK_WAIT_MARGIN)
        try:
            await lock.acquire()
        except LockTimeout:
            raise DownloadFailure(
                url, "timed out waiting for another process downloading the same module"
            ) from None
        except OSError as error:
            raise CacheWriteError(url, f"cannot lock {lock.path}: {error.strerror}") from None
        try:
            if lock.waited:  # another process may have just fetched it
                found = self._serve_cached(request, url, self.index.load())
                if found is not None:
                    return found
            fetch = partial(self._fetch_and_store, request, url, progress)
            return await self.negative.guard(url, request, fetch)  # failed recently: refused
        finally:
            lock.release()

    async def _fetch_and_store(
        self, request: ModuleRequest, url: str, progress: Progress | None
    ) -> CachedModule:
        key = self.index.url_key(url)
        decision = self._decide(request, url, key, self.index.load())
        fetched = await self._fetch(
            FetchRequest(
                url=url,
                sha256=decision.expected,
                pull_secret=request.pull_secret,
                timeout=request.timeout,
            ),
            progress,
        )
        data = self.index.load()
        path = self.layout.module_path(fetched.sha256)
        if self._prover.prove(path, fetched.sha256) is None:  # missing, or not these bytes
            await self._store(fetched, url, path)
        else:
            store.touch(path)
        self._remember(
            request, url, key, data, fetched.checksum, fetched.sha256, fetched.verified_keys
        )
        CACHE_ENTRIES.set(len(self.layout.module_files()))
        log.info(
            "cached a Wasm module",
            extra={"url": redact_url(url), "sha256": fetched.sha256, "size": len(fetched.data)},
        )
        return CachedModule(
            path=path,
            sha256=fetched.sha256,
            url=key,
            size=len(fetched.data),
            hit=False,
            checksum=fetched.checksum,
            oci_digest=_digest(fetched.checksum, fetched.sha256),
        )

    async def _fetch(self, request: FetchRequest, progress: Progress | None) -> FetchedModule:
        fetcher = self._fetcher
        if fetcher is None:
            fetcher = fetch_module
        return await fetcher(request, self.fetch_settings, progress)

    async def _store(self, fetched: FetchedModule, url: str, path: Path) -> None:
        """Temp file, compile check, atomic rename; nothing is left behind on failure."""
        temp = store.write_temp(self.layout, fetched.data, url)
        try:
            await self._validate(temp.path, url)
            self.size_cap.make_room(len(fetched.data), url)  # LRU eviction, or CacheFull
            store.commit(temp, path, url)
        finally:
            store.discard(temp)

    async def _validate(self, path: Path, url: str) -> None:
        validator = self._validator
        settings = self._validate_settings
        if validator is None:
            validator = validate_module
            settings = settings or ValidateSettings(
                compiled_cache_dir=store.compiled_dir(self.layout)
            )
        try:
            await validator(path, settings)
        except InvalidModule as error:
            raise InvalidModule(url, error.cause) from None

    # -- in use, purge, listing ------------------------------------------------------------

    def hold(self, owner: str, modules: Iterable[CachedModule]) -> None:
        """Mark ``modules`` in use by ``owner`` (a forwarded config), replacing its previous
        set; visible to every process sharing the directory. Raises :class:`ModuleGone`."""
        fds: list[int] = []
        for module in modules:
            fd = hold_file(module.path)
            if fd is None:
                for held in fds:
                    os.close(held)
                raise ModuleGone(f"module {module.path} is no longer in the cache")
            fds.append(fd)
        self.release(owner)
        self._holds[owner] = fds

    def release(self, owner: str) -> None:
        """``owner`` no longer uses its modules."""
        for fd in self._holds.pop(owner, ()):
            os.close(fd)

    def purge(self, now: float | None = None) -> list[Path]:
        """Delete modules untouched for the expiry period that no process holds."""
        self._ensure()
        removed = purge_expired(
            self.layout,
            self.index,
            self.settings.module_expiry,
            time.time() if now is None else now,
        )
        CACHE_ENTRIES.set(len(self.layout.module_files()))
        cache_bytes(self.layout)  # the wasm_cache_bytes gauge
        return removed

    async def purge_periodically(self) -> None:
        """Run :meth:`purge` every purge interval until cancelled."""
        import asyncio  # noqa: PLC0415 - keeps warm `prefetch` < 100 ms (docs/design.md, Layers)

        while True:
            await asyncio.sleep(self.settings.purge_interval)
            try:
                self.purge()
            except (OSError, FetchError) as error:
                log.warning("cache purge failed", extra={"error": str(error)})

    def entries(self) -> list[CacheEntry]:
        """Every module file with its URLs, size, last use and whether it is in use."""
        data = self.index.load()
        urls: dict[str, list[str]] = {}
        for url, rec in data.urls.items():
            urls.setdefault(rec.sha256, []).append(url)
        result = []
        for path in self.layout.module_files():
            try:
                st = path.lstat()  # a planted link is listed as itself, never followed
            except FileNotFoundError:
                continue
            result.append(
                CacheEntry(
                    sha256=path.stem,
                    path=path,
                    size=st.st_size,
                    last_used=st.st_mtime,
                    in_use=in_use(path),
                    urls=tuple(sorted(urls.get(path.stem, ()))),
                )
            )
        CACHE_ENTRIES.set(len(result))
        return result

    def close(self) -> None:
        """Write deferred index changes and release every hold of this process."""
        self.flush()
        for owner in list(self._holds):
            self.release(owner)


def _oci_name(url: str) -> str | None:
    """``registry/repository`` of an ``oci://`` URL, None if it does not parse."""

    try:
        return parse_reference(url).name
    except InvalidReference:
        return None


def normalize_url(url: str) -> str:
    """The canonical form of a module URL (see :func:`wasm_agent.fetch.dispatch.normalize_url`)."""

    return _normalize(url)


def _digest(checksum: str, sha256: str) -> str | None:
    """The OCI manifest digest a module was pinned by, when it is not the file's own sha256."""
    return f"sha256:{checksum}" if checksum and checksum != sha256 else None
