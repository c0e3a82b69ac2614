"""Pull policy: whether a request is served from the cache or fetched. Pure functions only.

Istio's rules (pkg/wasm/cache.go): the checksum to look for is the configured one, else the
digest of an ``oci://…@sha256:X`` URL, else the checksum last fetched for this URL, which
``Always`` reuses only while this resource's resourceVersion is unchanged. ``Unspecified``
behaves as ``IfNotPresent`` except for OCI URLs tagged ``latest`` (then ``Always``). A
configured checksum that is already cached never re-pulls.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from wasm_agent.cache.index import UrlRecord


class PullPolicy(enum.Enum):
    """Istio's ``imagePullPolicy`` / ``ISTIO_META_WASM_IMAGE_PULL_POLICY``."""

    UNSPECIFIED = "UNSPECIFIED_POLICY"
    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"

    @classmethod
    def parse(cls, text: str | None) -> PullPolicy:
        """Accept the API spellings (``IfNotPresent``, ``Always``, ``UNSPECIFIED_POLICY``, "")."""
        value = (text or "").strip()
        for policy in cls:
            if value.lower() in (policy.value.lower(), policy.name.lower()):
                return policy
        if value == "":
            return cls.UNSPECIFIED
        raise ValueError(f"unknown pull policy {text!r} (IfNotPresent, Always)")


@dataclass(frozen=True)
class Decision:
    """``cached``: serve this module file sha256 without network; else fetch expecting
    ``expected`` (the configured or URL-pinned checksum, or None)."""

    cached: str | None
    expected: str | None
    checksum: str | None  # the checksum looked up, if any


def oci_url_digest(url: str) -> str | None:
    """The hex of ``oci://…@sha256:<hex>``, else None."""
    if not url.startswith("oci://") or "@" not in url:
        return None
    digest = url.rsplit("@", 1)[1]
    return digest.removeprefix("sha256:").lower() if digest.startswith("sha256:") else None


def ignores_resource_version(policy: PullPolicy, url: str) -> bool:
    """True if a remembered checksum is reused whatever the resourceVersion."""
    if policy is PullPolicy.ALWAYS:
        return False
    if policy is PullPolicy.IF_NOT_PRESENT:
        return True
    if not url.startswith("oci://"):
        return True
    path = url.removeprefix("oci://").partition("/")[2]  # Istio: u.Path has suffix ":latest"
    return not path.endswith(":latest")


def decide(
    url: str,
    configured: str | None,
    policy: PullPolicy,
    resource_name: str,
    resource_version: str,
    record: UrlRecord | None,
    cached_file: Callable[[str], str | None],
) -> Decision:
    """Decide for one request. ``cached_file(checksum)`` gives the sha256 of the module file
    present in the cache for that checksum, or None."""
    expected = configured or oci_url_digest(url)
    checksum = expected
    if checksum is None and record is not None:
        same_version = record.resource_versions.get(resource_name) == resource_version
        if ignores_resource_version(policy, url) or same_version:
            checksum = record.checksum
    if checksum is not None:
        present = cached_file(checksum)
        if present is not None:
            return Decision(cached=present, expected=expected, checksum=checksum)
    return Decision(cached=None, expected=expected, checksum=checksum)
