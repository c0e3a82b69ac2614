"""Remote modules for ``check``: fetched (concurrently) through the module cache, as
``prefetch`` does, so a CI job that prefetched them checks exactly the cached bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from wasm_agent.cache.many import fetch_many
from wasm_agent.cache.model import CachedModule, ModuleRequest
from wasm_agent.cache.module_cache import ModuleCache
from wasm_agent.core.logs import redact_url, scrub
from wasm_agent.core.settings import FetchSettings, SettingsError, cache_settings_from_env
from wasm_agent.fetch.errors import FetchError

Outcome = tuple[tuple[bytes, str, str | None] | str, str]


def fetch_all(
    requests: list[ModuleRequest], fetch_settings: FetchSettings, cache_dir: str | Path | None
) -> list[Outcome]:
    """Per request: ``((data, sha256, oci_digest), note)`` or ``(error message, "")``."""
    try:
        cache = ModuleCache(cache_settings_from_env(cache_dir), fetch_settings)
    except (SettingsError, OSError) as error:
        return [(f"cannot use the module cache: {error}", "") for _ in requests]
    outcomes = asyncio.run(fetch_many(cache, requests))
    return [_outcome(r, o) for r, o in zip(requests, outcomes, strict=True)]


def _outcome(request: ModuleRequest, found: CachedModule | FetchError) -> Outcome:
    if isinstance(found, FetchError):
        return scrub(f"cannot fetch {redact_url(request.url)}: {found.cause}"), ""
    try:
        data = found.path.read_bytes()
    except OSError as error:
        return f"cannot read the cached module: {error}", ""
    how = "from the cache" if found.hit else "fetched and cached"
    return (data, found.sha256, found.oci_digest), f"{redact_url(request.url)}: {how}"
