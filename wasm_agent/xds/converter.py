"""The ECDS converter of the proxy: plan, fetch every remote module through the cache, decide.

The decisions are the pure functions of :mod:`wasm_agent.xds.decide`; this module runs the
fetches, counts the metrics and holds the modules Envoy will use. The cache is anything with
the :class:`ModuleStore` methods (the agent's :class:`~wasm_agent.cache.ModuleCache`, or the
demo's recording wrapper around it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from wasm_agent.cache import CachedModule, ModuleRequest
from wasm_agent.fetch.model import Progress
from wasm_agent.xds import decide, metrics
from wasm_agent.xds.convert import FailureMode
from wasm_agent.xds.decide import Forward, Nack
from wasm_agent.xds.types import Flavour
from wasm_agent.xds.wire import WireError

log = logging.getLogger(__name__)


class ModuleStore(Protocol):
    """What the converter needs of the module cache."""

    async def get(self, request: ModuleRequest, progress: Progress | None = None) -> CachedModule:
        """The local module for ``request`` (fetched, checked and stored on a miss)."""
        ...

    def hold(self, owner: str, modules: Iterable[CachedModule]) -> None:
        """Keep ``modules`` from being purged while ``owner`` uses them."""
        ...


class WasmConverter:
    """Plan -> fetch every remote module concurrently through the cache -> decide.

    The decisions are the pure functions of :mod:`wasm_agent.xds.decide`; this class only runs
    the fetches (``cache.get``), counts the metrics and holds the modules Envoy will use.
    """

    def __init__(self, cache: ModuleStore, mode: str = "nack") -> None:
        self.cache = cache
        self.mode = FailureMode(mode)

    async def convert(self, raw: bytes, flavour: Flavour, acked_version: str) -> Forward | Nack:
        """What to do with one raw ECDS response: :class:`Forward` bytes or send a :class:`Nack`."""
        try:
            plan = decide.plan_response(raw, flavour)
        except WireError as error:
            refusal = decide.unparsable(raw, flavour, error, acked_version)
            metrics.WASM_CONVERSION_COUNT.inc(result="unmarshal_failure")
            log.warning(
                "NACK ECDS response", extra={"nonce": refusal.nonce, "reason": refusal.message}
            )
            return refusal
        outcomes = await asyncio.gather(
            *(self.cache.get(remote.request) for remote in plan.remotes), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
        action = decide.decide(plan, dict(enumerate(outcomes)), self.mode, acked_version)
        for result in action.results:
            metrics.WASM_CONVERSION_COUNT.inc(result=str(result))
        if isinstance(action, Nack):
            log.warning(
                "NACK ECDS response", extra={"nonce": plan.nonce, "reason": action.message[:500]}
            )
            return action
        for failure in action.failures:
            log.warning("Wasm plugin replaced by an RBAC filter", extra={"reason": failure})
        return action

    def forwarded(self, action: Forward) -> None:
        """Hold the modules of a forwarded config (Envoy loads them from their paths)."""
        for name, module in action.holds:
            try:
                self.cache.hold(f"ecds:{name}", [module])
            except Exception as error:  # purged meanwhile: Envoy loaded it already
                log.warning("cannot hold module", extra={"error": str(error)})
