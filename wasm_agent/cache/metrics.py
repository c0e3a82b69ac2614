"""The cache's metrics (Istio's names), declared once."""

from __future__ import annotations

from wasm_agent.core.metrics import REGISTRY

CACHE_ENTRIES = REGISTRY.gauge("wasm_cache_entries", "Number of Wasm modules in the cache.")
CACHE_LOOKUPS = REGISTRY.counter(
    "wasm_cache_lookup_count", "Wasm module cache lookups, by hit.", labels=("hit",)
).preset(hit=("true", "false"))
