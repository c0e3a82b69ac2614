"""Remote modules for ``check``: fetched (concurrently) through the module cache, as
``prefetch`` does, so a CI job that prefetched them checks exactly the cached bytes."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
from typing import Protocol

from wasm_agent.cache.model import ModuleRequest
from wasm_agent.cache.module_cache import ModuleCache
from wasm_agent.cache.policy import PullPolicy
from wasm_agent.core.logs import redact_url
from wasm_agent.core.settings import FetchSettings, SettingsError, cache_settings_from_env
from wasm_agent.fetch.errors import FetchError

Outcome = tuple[tuple[bytes, str, str | None] | str, str]


class FetchTarget(Protocol):
    """What is fetched for one module to check (``wasm-agent check``'s ``Target``)."""

    url: str | None
    sha256: str | None
    pull_policy: str
    plugin: str | None


def fetch_all(
    args: argparse.Namespace,
    targets: list[FetchTarget],
    fetch_settings: FetchSettings,
    secret: bytes | None,
) -> list[Outcome]:
    """Per target: ``((data, sha256, oci_digest), note)`` or ``(error message, "")``."""

    if args.insecure_registry:
        hosts = fetch_settings.insecure_registries | set(args.insecure_registry)
        fetch_settings = replace(fetch_settings, insecure_registries=frozenset(hosts))
    try:
        cache = ModuleCache(cache_settings_from_env(args.cache_dir), fetch_settings)
    except (SettingsError, OSError) as error:
        return [(f"cannot use the module cache: {error}", "") for _ in targets]
    requests = []
    for target in targets:
        if target.url is None:
            raise ValueError(f"not a remote module: {target}")
        try:
            policy = PullPolicy.parse(target.pull_policy)
        except ValueError:
            policy = PullPolicy.UNSPECIFIED
        requests.append(
            ModuleRequest(
                url=target.url,
                sha256=target.sha256,
                pull_policy=policy,
                pull_secret=secret,
                timeout=args.timeout,
                resource_name=target.plugin or "",
            )
        )
    return asyncio.run(_fetch(cache, requests))


async def _fetch(cache: ModuleCache, requests: list[ModuleRequest]) -> list[Outcome]:
    async def one(request: ModuleRequest) -> Outcome:
        try:
            found = await cache.get(request)
            data = found.path.read_bytes()
        except FetchError as error:
            return f"cannot fetch {redact_url(request.url)}: {error.cause}", ""
        except OSError as error:
            return f"cannot read the cached module: {error}", ""
        record = cache.index.load().urls.get(found.url)
        digest = None
        if record is not None and record.checksum != found.sha256:
            digest = "sha256:" + record.checksum
        how = "from the cache" if found.hit else "fetched and cached"
        return (data, found.sha256, digest), f"{redact_url(request.url)}: {how}"

    return list(await asyncio.gather(*(one(r) for r in requests)))
