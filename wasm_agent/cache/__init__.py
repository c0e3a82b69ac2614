"""Content-addressed module store, pull policy, expiry and purge.

Modules: ``layout`` (paths), ``store`` (atomic writes), ``locks`` (flock), ``index`` (URL ->
checksum records), ``policy`` (pull decisions, pure), ``purge``, ``metrics``, and
``module_cache`` (:class:`ModuleCache`, tying them together).
"""

from __future__ import annotations

from wasm_agent.cache.model import CachedModule, CacheEntry, ModuleRequest
from wasm_agent.cache.module_cache import ModuleCache, ModuleGone
from wasm_agent.cache.policy import PullPolicy

__all__ = [
    "CacheEntry",
    "CachedModule",
    "ModuleCache",
    "ModuleGone",
    "ModuleRequest",
    "PullPolicy",
]
