"""The xDS wire scanner (``wasm_agent.xds.wire``) on arbitrary bytes.

Oracle: whenever upb parses the bytes as a (Delta)DiscoveryResponse or (Delta)DiscoveryRequest,
the scanner must not fail and must read the same type URL, nonce, version and NACK flag.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from wasm_agent.xds.types import Flavour
from wasm_agent.xds.wire import WireError, request_head, response_head, scan_fields

ALLOWED: tuple[type[BaseException], ...] = (WireError,)
MAX_LEN = 4096

_ALL_FIELDS = frozenset(range(1, 16))


def _parse(cls, data: bytes):
    try:
        return cls.FromString(data)
    except DecodeError:
        return None


def fuzz_one(data: bytes) -> None:
    """Scan ``data`` every way the proxy does; check against upb when upb accepts it."""
    sotw = _parse(discovery_pb2.DiscoveryResponse, data)
    delta = _parse(discovery_pb2.DeltaDiscoveryResponse, data)
    sotw_req = _parse(discovery_pb2.DiscoveryRequest, data)
    delta_req = _parse(discovery_pb2.DeltaDiscoveryRequest, data)
    for parsed in (sotw, delta):
        if parsed is not None:
            head = response_head(data)
            assert (head.type_url, head.nonce) == (parsed.type_url, parsed.nonce), head
    if sotw_req is not None:
        head = request_head(data, Flavour.SOTW)
        expected = (sotw_req.type_url, sotw_req.response_nonce, sotw_req.version_info)
        assert (head.type_url, head.response_nonce, head.version_info) == expected, head
        assert head.nack == sotw_req.HasField("error_detail"), head
    if delta_req is not None:
        head = request_head(data, Flavour.DELTA)
        assert (head.type_url, head.response_nonce) == (
            delta_req.type_url,
            delta_req.response_nonce,
        ), head
        assert head.nack == delta_req.HasField("error_detail"), head
    found = scan_fields(memoryview(data), _ALL_FIELDS)  # WireError on malformed input
    assert all(len(value) <= len(data) for value in found.values())
    response_head(data)
    for flavour in Flavour:
        request_head(data, flavour)
