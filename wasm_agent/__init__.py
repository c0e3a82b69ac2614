"""wasm-agent: distributes Proxy-Wasm extensions to Envoy the way Istio's agent does.

The design card's packages live under this import namespace:
``wasm_agent.agent`` (CLI, settings, lifecycle, status, reference host),
``wasm_agent.xds`` (xDS proxy and ECDS conversion), ``wasm_agent.fetch`` (HTTP, OCI and file
fetchers, module validation) and ``wasm_agent.cache`` (content-addressed module store).
They cannot be top-level packages: ``xds-protos`` installs top-level ``xds``, ``envoy`` and
``udpa`` packages, and a top-level ``xds/`` of ours would shadow the Envoy API messages.
"""

__version__ = "0.1.0"
