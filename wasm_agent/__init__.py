"""wasm-agent: distributes Proxy-Wasm extensions to Envoy the way Istio's agent does.

The design card's packages live under this import namespace, one layer each (lower layers
never import higher ones; docs/design.md, "Layers"): ``core`` (errors, logging, metrics,
settings) <- ``fetch`` (fetchers and download gates) <- ``cache`` (content-addressed store)
<- ``xds`` (the xDS proxy); ``host`` (the reference host); ``check`` (the CI gate); ``demo``;
``node`` (the CSI node service); ``agent`` (the process: CLI and commands).
They cannot be top-level packages: ``xds-protos`` installs top-level ``xds``, ``envoy`` and
``udpa`` packages, and a top-level ``xds/`` of ours would shadow the Envoy API messages.
"""

__version__ = "0.1.0"
