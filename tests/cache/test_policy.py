"""The pull-policy decision, table-driven (Istio pkg/wasm/cache.go semantics)."""

from __future__ import annotations

import pytest

from wasm_agent.cache.index import UrlRecord
from wasm_agent.cache.policy import Decision, PullPolicy, decide, ignores_resource_version

A, B, D = "a" * 64, "b" * 64, "d" * 64
HTTP = "http://h/m.wasm"
OCI = "oci://reg/repo:v1"
LATEST = "oci://reg:5000/repo:latest"
PINNED = f"oci://reg/repo@sha256:{D}"
U, IFP, ALW = PullPolicy.UNSPECIFIED, PullPolicy.IF_NOT_PRESENT, PullPolicy.ALWAYS


def rec(checksum: str = A, sha: str | None = None, **versions: str) -> UrlRecord:
    return UrlRecord(checksum=checksum, sha256=sha or checksum, resource_versions=versions)


# (url, configured, policy, resource version, record, cached checksums) -> (cached, expected)
CASES = [
    # nothing known: fetch
    (HTTP, None, U, "1", None, {}, (None, None)),
    # a configured checksum already cached never re-pulls, whatever the policy or version
    (HTTP, A, ALW, "2", rec(A, r="1"), {A: A}, (A, A)),
    (OCI, A, ALW, "9", None, {A: B}, (B, A)),
    (LATEST, A, U, "", None, {A: A}, (A, A)),
    # configured but not cached: fetch expecting it
    (HTTP, A, IFP, "1", rec(B, r="1"), {B: B}, (None, A)),
    # oci://…@sha256:X with no sha: a hit on X without network
    (PINNED, None, U, "", None, {D: B}, (B, D)),
    (PINNED, None, ALW, "7", None, {D: B}, (B, D)),
    (PINNED, None, U, "", None, {}, (None, D)),
    # remembered checksum: IfNotPresent uses it whatever the version
    (OCI, None, IFP, "2", rec(A, r="1"), {A: A}, (A, None)),
    (HTTP, None, IFP, "2", rec(A, r="1"), {A: A}, (A, None)),
    # Unspecified = IfNotPresent...
    (OCI, None, U, "2", rec(A, r="1"), {A: A}, (A, None)),
    (HTTP, None, U, "2", rec(A, r="1"), {A: A}, (A, None)),
    # ...except oci tag latest = Always: same version reuses, a new version re-pulls
    (LATEST, None, U, "1", rec(A, r="1"), {A: A}, (A, None)),
    (LATEST, None, U, "2", rec(A, r="1"), {A: A}, (None, None)),
    # Always: re-pull when this resource's version changed (or it was never seen)
    (OCI, None, ALW, "1", rec(A, r="1"), {A: A}, (A, None)),
    (OCI, None, ALW, "2", rec(A, r="1"), {A: A}, (None, None)),
    (HTTP, None, ALW, "2", rec(A, r="1"), {A: A}, (None, None)),
    (OCI, None, ALW, "1", rec(A, other="1"), {A: A}, (None, None)),
    # remembered checksum whose file is gone: fetch
    (OCI, None, IFP, "1", rec(A, r="1"), {}, (None, None)),
    # OCI checksum (manifest digest) maps to a different file sha256
    (OCI, None, IFP, "1", rec(D, B, r="1"), {D: B}, (B, None)),
]


@pytest.mark.parametrize(
    ("url", "configured", "policy", "version", "record", "cached", "want"), CASES
)
def test_decide(url, configured, policy, version, record, cached, want) -> None:
    decision = decide(url, configured, policy, "r", version, record, cached.get)
    assert isinstance(decision, Decision)
    assert (decision.cached, decision.expected) == want


@pytest.mark.parametrize(
    ("policy", "url", "ignores"),
    [
        (ALW, HTTP, False),
        (IFP, LATEST, True),
        (U, LATEST, False),
        (U, "oci://reg/repo:latest", False),
        (U, "oci://reg:5000/repo", True),  # only an explicit :latest tag counts
        (U, "oci://reg/repo:latest-1", True),
        (U, "http://h/x:latest", True),  # only OCI URLs
    ],
)
def test_ignores_resource_version(policy, url, ignores) -> None:
    assert ignores_resource_version(policy, url) is ignores


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("", U),
        (None, U),
        ("UNSPECIFIED_POLICY", U),
        ("IfNotPresent", IFP),
        ("Always", ALW),
        ("always", ALW),
    ],
)
def test_parse_policy(text, policy) -> None:
    assert PullPolicy.parse(text) is policy


def test_parse_policy_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown pull policy 'Never'"):
        PullPolicy.parse("Never")
