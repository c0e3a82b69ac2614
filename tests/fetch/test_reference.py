"""Parsing oci:// references (go-containerregistry / Istio conventions)."""

from __future__ import annotations

import pytest

from wasm_agent.fetch.reference import InvalidReference, OciReference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "oci://127.0.0.1:5000/wasm/plugin:v1",
            OciReference("127.0.0.1:5000", "wasm/plugin", "v1"),
        ),
        ("oci://ghcr.io/org/team/filter", OciReference("ghcr.io", "org/team/filter", "latest")),
        ("oci://localhost/filter:1.0", OciReference("localhost", "filter", "1.0")),
        (
            "oci://registry.example.com/a@" + DIGEST,
            OciReference("registry.example.com", "a", None, DIGEST),
        ),
        (
            "oci://docker.io/istio/plugin:1.2",
            OciReference("index.docker.io", "istio/plugin", "1.2"),
        ),
        ("oci://docker.io/plugin", OciReference("index.docker.io", "library/plugin", "latest")),
        ("oci://plugin:v2", OciReference("index.docker.io", "library/plugin", "v2")),
        ("oci://user/plugin", OciReference("index.docker.io", "user/plugin", "latest")),
        ("ghcr.io/org/filter:v1", OciReference("ghcr.io", "org/filter", "v1")),
        ("oci://host:5000/a/b:t@" + DIGEST, OciReference("host:5000", "a/b", "t", DIGEST)),
        ("oci://[::1]:5000/a:t", OciReference("[::1]:5000", "a", "t")),
    ],
)
def test_parse(url: str, expected: OciReference) -> None:
    assert parse_reference(url) == expected


def test_reference_is_digest_when_pinned() -> None:
    ref = parse_reference("oci://host:5000/a/b:t@" + DIGEST)
    assert ref.reference == DIGEST
    assert ref.name == "host:5000/a/b"
    assert parse_reference("oci://host:5000/a/b").reference == "latest"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("oci://", "empty"),
        ("oci://host:5000/", "repository"),
        ("oci://host:5000/Upper/case", "component"),
        ("oci://host:5000/a//b", "component"),
        ("oci://host:5000/a:bad!tag", "tag"),
        ("oci://host:5000/a@sha256:xyz", "digest"),
        ("oci://host:5000/a@md5:" + "ab" * 16, "digest"),
        ("https://host/a", "not an oci"),
        ("oci://host:5000/a b", "whitespace"),
        ("oci://host_name:5000/a", "registry host"),
        ("oci://host:5000/" + "a" * 256, "longer"),
    ],
)
def test_malformed(url: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_reference(url)
