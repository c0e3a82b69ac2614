"""Property tests: mutated or arbitrary ECDS input never crashes the conversion."""

from __future__ import annotations

from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from udpa.type.v1 import typed_struct_pb2

from tests.xds.ecds_builders import (
    SECRET,
    delta_response,
    extension,
    module,
    sotw_response,
    typed_struct,
    wasm_filter,
)
from wasm_agent.fetch.errors import DownloadFailure
from wasm_agent.xds.convert import FailureMode, MalformedResource, plan_ecds
from wasm_agent.xds.decide import Forward, Nack, decide, plan_response
from wasm_agent.xds.types import HTTP_WASM_TYPE, NETWORK_WASM_TYPE, Flavour
from wasm_agent.xds.wire import WireError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENV = {
    "ISTIO_META_WASM_IMAGE_PULL_SECRET": SECRET,
    "ISTIO_META_WASM_IMAGE_PULL_POLICY": "IfNotPresent",
    "KEEP": "1",
}
RESOURCES = [
    extension("http", wasm_filter(env=ENV)),
    extension("net", wasm_filter(network=True, failure_policy=wasm_pb2.FAIL_OPEN)),
    extension("ts", typed_struct(wasm_filter(env=ENV), "xds")),
    extension("local", wasm_filter(local="/etc/a.wasm")),
    extension("router", router_pb2.Router()),
]
SOTW = sotw_response(RESOURCES).SerializeToString()
DELTA = delta_response([(f"r{i}", r) for i, r in enumerate(RESOURCES)], ["x"]).SerializeToString()

mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.integers(min_value=0),
    st.binary(min_size=1, max_size=4),
)


def mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, at, payload in edits:
        if not out:
            break
        at %= len(out)
        if kind == "flip":
            out[at] ^= payload[0] or 1
        elif kind == "insert":
            out[at:at] = payload
        elif kind == "delete":
            del out[at : at + len(payload)]
        else:
            del out[at:]
    return bytes(out)


def run_all_outcomes(plan) -> None:
    successes = {i: module(f"m{i}") for i in range(len(plan.remotes))}
    failures = {i: DownloadFailure(r.request.url, "down") for i, r in enumerate(plan.remotes)}
    for outcomes in (successes, failures):
        for mode in FailureMode:
            action = decide(plan, outcomes, mode, "v0")
            assert isinstance(action, Forward | Nack)
            if isinstance(action, Forward) and plan.is_ecds:
                cls = (
                    discovery_pb2.DiscoveryResponse
                    if plan.flavour is Flavour.SOTW
                    else discovery_pb2.DeltaDiscoveryResponse
                )
                cls.FromString(action.data)


@FAST
@given(st.sampled_from([Flavour.SOTW, Flavour.DELTA]), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_responses_only_raise_wire_error(flavour: Flavour, edits) -> None:
    data = mutate(SOTW if flavour is Flavour.SOTW else DELTA, edits)
    try:
        plan = plan_response(data, flavour)
    except WireError:
        return
    run_all_outcomes(plan)


@FAST
@given(st.binary(max_size=300), st.sampled_from([HTTP_WASM_TYPE, NETWORK_WASM_TYPE]))
def test_arbitrary_wasm_payloads_are_planned_or_malformed(value: bytes, type_url: str) -> None:
    resource = extension("fuzz", any_pb2.Any(type_url=type_url, value=value))
    try:
        plan = plan_ecds([resource])
    except MalformedResource as exc:
        assert "fuzz" in str(exc)
        return
    assert len(plan.remotes) <= 1


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["config", "vmConfig", "code", "remote", "httpUri", "uri", "name", "x"]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=15,
)


@FAST
@given(st.dictionaries(st.sampled_from(["config", "name", "other"]), json_values, max_size=3))
def test_arbitrary_typed_structs_are_planned_or_malformed(value: dict) -> None:
    wrapper = typed_struct_pb2.TypedStruct(type_url=HTTP_WASM_TYPE)
    struct = struct_pb2.Struct()
    struct.update(value)
    wrapper.value.CopyFrom(struct)
    typed = any_pb2.Any()
    typed.Pack(wrapper)
    try:
        plan_ecds([extension("ts", typed)])
    except MalformedResource as exc:
        assert "ts" in str(exc)
