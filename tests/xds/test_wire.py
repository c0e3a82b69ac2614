"""The top-level wire scanner: agrees with a full parse, fails cleanly on garbage."""

from __future__ import annotations

import contextlib

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasm_agent.xds.types import CLUSTER_TYPE, ECDS_TYPE, Flavour
from wasm_agent.xds.wire import (
    WireError,
    request_head,
    response_head,
    response_nonce,
    response_type_url,
    scan_fields,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_reads_type_url_and_nonce_of_both_response_kinds() -> None:
    sotw = discovery_pb2.DiscoveryResponse(version_info="1", type_url=ECDS_TYPE, nonce="n1")
    sotw.resources.add(type_url=CLUSTER_TYPE, value=b"\x0a\x03abc" * 100)
    data = sotw.SerializeToString()
    assert response_type_url(data) == ECDS_TYPE
    assert response_nonce(data) == "n1"
    delta = discovery_pb2.DeltaDiscoveryResponse(type_url=CLUSTER_TYPE, nonce="d2")
    delta.removed_resources.append("x")
    assert response_head(delta.SerializeToString()) == (
        response_head(delta.SerializeToString()).__class__(CLUSTER_TYPE, "d2")
    )


def test_missing_fields_are_empty_and_memoryview_works() -> None:
    assert response_type_url(b"") == ""
    data = discovery_pb2.DiscoveryResponse(type_url="t").SerializeToString()
    assert response_type_url(memoryview(data)) == "t"


def test_last_occurrence_wins_like_a_parser() -> None:
    first = discovery_pb2.DiscoveryResponse(type_url="first").SerializeToString()
    second = discovery_pb2.DiscoveryResponse(type_url="second").SerializeToString()
    assert response_type_url(first + second) == "second"
    assert discovery_pb2.DiscoveryResponse.FromString(first + second).type_url == "second"


def test_skips_every_wire_type_and_groups() -> None:
    # varint 1, fixed64 2, fixed32 3 (unknown numbers), group 9 holding a field 4, then field 4
    data = (
        b"\x08\x96\x01"
        + b"\x11"
        + b"\x00" * 8
        + b"\x1d"
        + b"\x00" * 4
        + b"\x4b"  # start group 9
        + b"\x22\x03bad"  # field 4 inside the group: not the top-level type_url
        + b"\x4c"  # end group 9
        + b"\x22\x02ok"
    )
    assert response_type_url(data) == "ok"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x22\x05abc", "runs past the end"),
        (b"\x22", "truncated varint"),
        (b"\x80", "truncated varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x00", "invalid field number 0"),
        (b"\x0f", "invalid wire type 7"),
        (b"\x0e", "invalid wire type 6"),
        (b"\x0b", "unterminated group"),
        (b"\x0c", "unmatched end of group"),
        (b"\x0b\x14", "unmatched end of group"),
        (b"\x11\x00\x00", "truncated fixed-width"),
        (b"\x22\x02\xff\xfe", "not valid UTF-8"),
    ],
)
def test_malformed_input_raises_wire_error(data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        response_type_url(data)


def test_request_heads() -> None:
    ack = discovery_pb2.DiscoveryRequest(version_info="v3", type_url=ECDS_TYPE, response_nonce="n")
    ack.node.id = "sidecar~1"
    head = request_head(ack.SerializeToString(), Flavour.SOTW)
    assert (head.type_url, head.version_info, head.response_nonce, head.nack) == (
        ECDS_TYPE,
        "v3",
        "n",
        False,
    )
    ack.error_detail.message = "bad"
    assert request_head(ack.SerializeToString(), Flavour.SOTW).nack is True
    delta = discovery_pb2.DeltaDiscoveryRequest(type_url=ECDS_TYPE, response_nonce="d")
    delta.resource_names_subscribe.append("x")
    head = request_head(delta.SerializeToString(), Flavour.DELTA)
    assert (head.type_url, head.response_nonce, head.version_info, head.nack) == (
        ECDS_TYPE,
        "d",
        "",
        False,
    )
    delta.error_detail.code = 13
    assert request_head(delta.SerializeToString(), Flavour.DELTA).nack is True


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        head = response_head(data)
    except WireError:
        return
    assert isinstance(head.type_url, str)
    for flavour in Flavour:
        with contextlib.suppress(WireError):
            request_head(data, flavour)


@FAST
@given(st.binary(max_size=256))
def test_agrees_with_upb_whenever_upb_parses(data: bytes) -> None:
    try:
        parsed = discovery_pb2.DiscoveryResponse.FromString(data)
    except DecodeError:
        return
    head = response_head(data)
    assert (head.type_url, head.nonce) == (parsed.type_url, parsed.nonce)


text = st.text(max_size=40)
anys = st.builds(lambda url, value: (url, value), st.text(max_size=30), st.binary(max_size=64))


@FAST
@given(
    version=text,
    type_url=text,
    nonce=text,
    canary=st.booleans(),
    resources=st.lists(anys, max_size=5),
    delta=st.booleans(),
)
def test_agrees_with_upb_on_valid_messages(version, type_url, nonce, canary, resources, delta):
    if delta:
        message = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce
        )
        for url, value in resources:
            message.resources.add(name=url).resource.value = value
    else:
        message = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce, canary=canary
        )
        for url, value in resources:
            message.resources.add(type_url=url, value=value)
    data = message.SerializeToString()
    assert response_head(data) == response_head(data).__class__(type_url, nonce)
    assert scan_fields(data, frozenset({4}))[4] == type_url.encode() if type_url else True


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


numbers = st.sampled_from([1, 3, 4, 5, 6, 8, 15, 16, 2047, 2**29 - 1])
scalars = st.one_of(
    st.builds(lambda n, v: _tag(n, 0) + _varint(v), numbers, st.integers(0, 2**64 - 1)),
    st.builds(lambda n, v: _tag(n, 1) + v, numbers, st.binary(min_size=8, max_size=8)),
    st.builds(lambda n, v: _tag(n, 5) + v, numbers, st.binary(min_size=4, max_size=4)),
    st.builds(
        lambda n, v: _tag(n, 2) + _varint(len(v)) + v,
        numbers,
        st.text(max_size=20).map(str.encode),
    ),
    st.builds(
        lambda n, v: _tag(n, 2) + _varint(len(v)) + v,
        st.sampled_from([4, 5]),
        st.text(min_size=1, max_size=20).map(str.encode),
    ),
)
wire_fields = st.recursive(
    scalars,
    lambda inner: st.builds(
        lambda n, body: _tag(n, 3) + b"".join(body) + _tag(n, 4),
        st.sampled_from([4, 5, 9, 1000]),
        st.lists(inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(wire_fields, max_size=12))
def test_well_formed_wire_data_scans_and_agrees_with_upb(fields: list[bytes]) -> None:
    data = b"".join(fields)
    head = response_head(data)  # never raises: every string is valid UTF-8
    try:
        parsed = discovery_pb2.DiscoveryResponse.FromString(data)
    except DecodeError:
        return
    assert (head.type_url, head.nonce) == (parsed.type_url, parsed.nonce)
