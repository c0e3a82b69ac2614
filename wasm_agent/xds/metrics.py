"""Metrics of the xDS proxy (Istio's agent names, prefix ``istio_agent_``)."""

from __future__ import annotations

from wasm_agent.core.metrics import REGISTRY

ISTIOD_CONNECTION_FAILURES = REGISTRY.counter(
    "istiod_connection_failures", "Upstream streams to istiod that could not be opened."
)
ISTIOD_CONNECTION_TERMINATIONS = REGISTRY.counter(
    "istiod_connection_terminations",
    "Upstream streams to istiod that ended (type=cancel for clean ends, error otherwise).",
    labels=("type",),
)
ENVOY_CONNECTION_TERMINATIONS = REGISTRY.counter(
    "envoy_connection_terminations",
    "Envoy streams that ended (type=cancel for clean ends, error otherwise).",
    labels=("type",),
)
XDS_PROXY_REQUESTS = REGISTRY.counter(
    "xds_proxy_requests", "Discovery requests forwarded to istiod (including agent NACKs)."
)
XDS_PROXY_RESPONSES = REGISTRY.counter(
    "xds_proxy_responses", "Discovery responses received from istiod."
)
WASM_CONVERSION_COUNT = REGISTRY.counter(
    "wasm_config_conversion_count",
    "ECDS resource conversions by result.",
    labels=("result",),
)
WASM_CONVERSION_DURATION = REGISTRY.histogram(
    "wasm_config_conversion_duration",
    "Time to convert one ECDS response, in milliseconds.",
    buckets=(0.5, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 30000),
)
XDS_STREAMS_ACTIVE = REGISTRY.gauge(
    "xds_proxy_streams", "Envoy ADS streams currently open through the proxy."
)
