"""The node service's metrics, declared once in the shared registry."""

from __future__ import annotations

from wasm_agent.core.metrics import REGISTRY

NODE_VOLUMES = REGISTRY.gauge("wasm_node_volumes", "Pod views (CSI volumes) this node serves.")
NODE_PUBLISHES = REGISTRY.counter(
    "wasm_node_publish_count", "CSI NodePublishVolume calls, by result.", labels=("result",)
)
NODE_REQUESTS = REGISTRY.counter(
    "wasm_node_module_requests",
    "Module requests from pods, by result (placed, denied, fetch_failed, bad_request).",
    labels=("result",),
)
