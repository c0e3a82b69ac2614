"""Many modules through one cache at once: what ``prefetch`` and ``check`` both do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from wasm_agent.cache.model import CachedModule, ModuleRequest
from wasm_agent.cache.module_cache import ModuleCache
from wasm_agent.fetch.errors import FetchError
from wasm_agent.fetch.model import Progress

Outcome = CachedModule | FetchError


async def fetch_many(
    cache: ModuleCache,
    requests: Sequence[ModuleRequest],
    *,
    progress: Callable[[ModuleRequest], Progress | None] | None = None,
    done: Callable[[ModuleRequest, Outcome], None] | None = None,
) -> list[Outcome]:
    """Every request through :meth:`ModuleCache.get`, concurrently, in order: the module or
    the :class:`FetchError` that stopped it. ``progress(request)`` gives each download's
    progress callback; ``done(request, outcome)`` is called as each one finishes."""

    async def one(request: ModuleRequest) -> Outcome:
        outcome: Outcome
        try:
            outcome = await cache.get(request, progress(request) if progress else None)
        except FetchError as error:
            outcome = error
        if done is not None:
            done(request, outcome)
        return outcome

    return list(await asyncio.gather(*(one(r) for r in requests)))
