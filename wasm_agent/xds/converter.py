"""The ECDS converter of the proxy: plan, fetch every remote module through the cache, decide.

The decisions are the pure functions of :mod:`wasm_agent.xds.decide`; this module runs the
fetches, counts the metrics and holds the modules Envoy will use.
"""

from __future__ import annotations

import asyncio
import logging

from wasm_agent.cache import ModuleCache
from wasm_agent.xds import decide, metrics
from wasm_agent.xds.convert import FailureMode
from wasm_agent.xds.ecds import EcdsResult
from wasm_agent.xds.types import Flavour
from wasm_agent.xds.wire import WireError

log = logging.getLogger(__name__)


class WasmConverter:
    """Plan -> fetch every remote module concurrently through the cache -> decide.

    The decisions are the pure functions of :mod:`wasm_agent.xds.decide`; this class only runs
    the fetches (``cache.get``), counts the metrics and holds the modules Envoy will use.
    """

    def __init__(self, cache: ModuleCache, mode: str = "nack") -> None:
        self.cache = cache
        self.mode = FailureMode(mode)

    async def convert(self, raw: bytes, flavour: Flavour, acked_version: str) -> EcdsResult:
        try:
            plan = decide.plan_response(raw, flavour)
        except WireError as error:
            refusal = decide.unparsable(raw, flavour, error, acked_version)
            metrics.WASM_CONVERSION_COUNT.inc(result="unmarshal_failure")
            log.warning(
                "NACK ECDS response", extra={"nonce": refusal.nonce, "reason": refusal.message}
            )
            return EcdsResult(nack=refusal.request)
        remotes = plan.ecds.remotes if plan.ecds is not None else ()
        outcomes = await asyncio.gather(
            *(self.cache.get(remote.request) for remote in remotes), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
        action = decide.decide(plan, dict(enumerate(outcomes)), self.mode, acked_version)
        for result in action.results:
            metrics.WASM_CONVERSION_COUNT.inc(result=str(result))
        if isinstance(action, decide.Nack):
            log.warning(
                "NACK ECDS response", extra={"nonce": plan.nonce, "reason": action.message[:500]}
            )
            return EcdsResult(nack=action.request)
        for failure in action.failures:
            log.warning("Wasm plugin replaced by an RBAC filter", extra={"reason": failure})
        held = [
            (remote.resource_name, outcome)
            for remote, outcome in zip(remotes, outcomes, strict=True)
            if not isinstance(outcome, BaseException)
        ]

        def hold() -> None:
            for name, module in held:
                try:
                    self.cache.hold(f"ecds:{name}", [module])
                except Exception as error:  # purged meanwhile: Envoy loaded it already
                    log.warning("cannot hold module", extra={"error": str(error)})

        return EcdsResult(forward=action.data, on_forwarded=hold)
