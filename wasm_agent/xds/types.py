"""xDS type URLs and the stream flavour (SotW or Delta) the proxy serves."""

from __future__ import annotations

import enum

TYPE_PREFIX = "type.googleapis.com/"

# Resource types of discovery responses
ECDS_TYPE = TYPE_PREFIX + "envoy.config.core.v3.TypedExtensionConfig"
LISTENER_TYPE = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
CLUSTER_TYPE = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Filter configurations inside a TypedExtensionConfig
HTTP_WASM_TYPE = TYPE_PREFIX + "envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM_TYPE = TYPE_PREFIX + "envoy.extensions.filters.network.wasm.v3.Wasm"
HTTP_RBAC_TYPE = TYPE_PREFIX + "envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC_TYPE = TYPE_PREFIX + "envoy.extensions.filters.network.rbac.v3.RBAC"
UDPA_TYPED_STRUCT_TYPE = TYPE_PREFIX + "udpa.type.v1.TypedStruct"
XDS_TYPED_STRUCT_TYPE = TYPE_PREFIX + "xds.type.v3.TypedStruct"


def type_name(type_url: str) -> str:
    """The message name of a type URL: everything after the last ``/`` (as protobuf does)."""
    return type_url.rpartition("/")[2]


class Flavour(enum.Enum):
    """Which ADS variant a stream speaks."""

    SOTW = "sotw"  # StreamAggregatedResources: DiscoveryRequest / DiscoveryResponse
    DELTA = "delta"  # DeltaAggregatedResources: DeltaDiscoveryRequest / DeltaDiscoveryResponse
