"""Parse ``oci://`` image references the way go-containerregistry (and so Istio) does.

``oci://[host[:port]/]repo[/more][:tag][@sha256:<hex>]``. No host, or ``docker.io``, means
Docker Hub (``index.docker.io``) where a one-part repository gets the ``library/`` prefix.
The first path part is a registry host when it contains ``.`` or ``:`` or is ``localhost``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wasm_agent.core.errors import WasmAgentError

DOCKER_HUB = "index.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


class InvalidReference(WasmAgentError, ValueError):
    """The reference is malformed; the message says which part."""


@dataclass(frozen=True)
class OciReference:
    """A parsed image reference.

    ``registry`` is ``host[:port]`` (``index.docker.io`` for Docker Hub), ``tag`` is set when no
    digest is given (default ``latest``), ``digest`` is ``sha256:<hex>`` when pinned.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest (the cache's module name)."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host serving the registry API (Docker Hub's API lives on ``index.docker.io``)."""
        return self.registry

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"oci://{self.name}{suffix}"


def parse_reference(url: str) -> OciReference:
    """Parse ``oci://...`` (the scheme is optional) into an :class:`OciReference`."""
    text = url.strip()
    if text.lower().startswith("oci://"):
        text = text[len("oci://") :]
    elif "://" in text:
        raise InvalidReference(f"not an oci:// reference: {text.split('://', 1)[0]}://")
    if not text:
        raise InvalidReference("empty image reference")
    if any(ch.isspace() for ch in text):
        raise InvalidReference("image reference contains whitespace")

    digest = None
    if "@" in text:
        text, digest = text.rsplit("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidReference(
                f"invalid digest {digest!r} (expected sha256: and 64 lowercase hex digits)"
            )

    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:  # a colon after the last slash separates the tag
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}")

    parts = text.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, parts[1:]
        if not _HOST.fullmatch(registry):
            raise InvalidReference(f"invalid registry host {registry!r}")
        port = registry.rpartition(":")[2] if not registry.endswith("]") else ""
        if port.isdigit() and not 0 < int(port) <= 65535:
            raise InvalidReference(f"invalid registry port {port} (not in 1-65535)")
    else:
        registry, path = DOCKER_HUB, parts
    if registry.lower() in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if len(path) == 1:
            path = ["library", *path]
    if not path or path == [""]:
        raise InvalidReference("missing repository name")
    for component in path:
        if not _COMPONENT.fullmatch(component):
            raise InvalidReference(
                f"invalid repository name component {component!r} "
                "(lowercase letters, digits and . _ - separators)"
            )
    repository = "/".join(path)
    if len(repository) > 255:
        raise InvalidReference("repository name longer than 255 characters")
    if digest is None and tag is None:
        tag = DEFAULT_TAG
    return OciReference(registry=registry, repository=repository, tag=tag, digest=digest)
