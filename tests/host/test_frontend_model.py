"""The front-end model (``wasm_agent.host.frontend``) and Envoy's map-valued properties
(``wasm_agent.host.celmap``): pure functions, checked against what Envoy 1.40 recorded."""

from __future__ import annotations

from wasm_agent.host import celmap, frontend
from wasm_agent.host.maps import HeaderMap, deserialize_pairs


def test_request_headers_in_hcm_order() -> None:
    got = frontend.request_headers([("Host", "h"), ("X-A", "1"), (":method", "POST")], 3, 7)
    assert got == [
        (":authority", "h"), (":path", "/"), (":method", "POST"), ("x-a", "1"),
        ("content-length", "3"), (":scheme", "http"), ("x-forwarded-proto", "http"),
        ("x-request-id", "00000000-0000-4000-8000-000000000007"),
    ]  # fmt: skip


def test_request_headers_keep_what_the_client_gave() -> None:
    got = frontend.request_headers(
        [(":authority", "a"), (":path", "/p"), ("x-request-id", "r"), (":scheme", "https")], 0, 1
    )
    assert (":scheme", "https") in got and ("x-request-id", "r") in got
    assert not any(name == "content-length" for name, _ in got)


def test_frames_and_service_time() -> None:
    assert frontend.frames([b"ab"]) == [b"ab", b""]
    assert frontend.frames([b""]) == [] and frontend.frames([]) == []
    assert frontend.response_headers([(":status", "200")])[-1] == (
        "x-envoy-upstream-service-time", "1",
    )  # fmt: skip


def test_codec_adds_length_only_when_missing() -> None:
    empty = [(":status", "403"), ("x-plugin", "a"), ("x-later", "1")]
    assert frontend.client_headers(empty, 0)[-1] == ("content-length", "0")
    assert frontend.client_headers(empty, 4)[-1] == ("transfer-encoding", "chunked")
    sized = [(":status", "200"), ("content-length", "4")]
    assert frontend.client_headers(sized, 4) == sized
    assert frontend.client_headers([(":status", "204")], 0) == [(":status", "204")]


def test_map_property_merges_repeated_headers_and_is_not_map_order() -> None:
    headers = HeaderMap([(":path", "/"), ("x-dup", "1"), ("x-a", "a"), ("x-dup", "2")])
    pairs = deserialize_pairs(celmap.serialize_map(headers, seed=1))
    assert sorted(pairs) == sorted([(b":path", b"/"), (b"x-dup", b"1,2"), (b"x-a", b"a")])
    assert [k for k, _ in pairs] != [b":path", b"x-dup", b"x-a"]


def test_map_property_order_changes_from_call_to_call() -> None:
    headers = HeaderMap([(f"x-{i}", str(i)) for i in range(9)])
    orders = {tuple(celmap.hash_order(celmap.merged_pairs(headers), seed)) for seed in range(5)}
    assert len(orders) > 1
