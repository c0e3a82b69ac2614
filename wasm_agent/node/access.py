"""May this pod read this module? Private modules stay private.

For an ``oci://`` module the registry is asked with the pod's own credentials (its pull secret,
or none: the node's own docker config is never used for a pod) to resolve the manifest, as
Kubernetes' KEP-2535 re-checks pulls of cached private images. A "yes" is remembered per
(credentials, repository) for ``ttl`` seconds; a "no" is not remembered. A pull secret that
names a credential helper (``credsStore``, ``credHelpers``) is refused: the node service never
runs a helper for a pod (it would run with the node's identity). ``http(s)://`` modules need no
check here (their URL is their credential: :mod:`origins` binds a cached module to it); other
schemes are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from wasm_agent.core.logs import redact_url
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.credential_helpers import parse_helpers
from wasm_agent.fetch.dockerconfig import DockerConfigError
from wasm_agent.fetch.errors import AuthFailure, FetchError
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.oci import resolve_oci_digest
from wasm_agent.fetch.reference import InvalidReference, parse_reference

log = logging.getLogger(__name__)

Resolver = Callable[[FetchRequest, FetchSettings], Awaitable[str]]
MAX_REMEMBERED = 10_000


class AccessDenied(Exception):
    """The pod may not have this module; the message says why (never a secret)."""


class AccessChecker:
    """Checks pods' access to modules with the registry and remembers the answers a while."""

    def __init__(
        self, settings: FetchSettings, ttl: float, resolver: Resolver | None = None
    ) -> None:
        self.settings = dataclasses.replace(
            settings, docker_config_dir=None, registry_client_certs=False
        )
        self.ttl = ttl
        self._resolve = resolver or _resolve
        self._granted: dict[tuple[str, str], float] = {}

    async def check(self, url: str, pull_secret: bytes | None, timeout: float | None) -> None:
        """Return if a pod presenting ``pull_secret`` may read ``url``; else :class:`AccessDenied`
        (:class:`FetchError` when the registry cannot be asked)."""
        if url.startswith(("http://", "https://")):
            return
        if not url.startswith("oci://"):
            raise AccessDenied(f"pods may only ask for http(s):// or oci:// modules: {url!r}")
        try:
            name = parse_reference(url).name
        except InvalidReference as error:
            raise AccessDenied(f"invalid image reference: {error}") from None
        if pull_secret:
            refuse_helpers(pull_secret)
        key = (_secret_key(pull_secret), name)
        now = time.monotonic()
        expiry = self._granted.get(key)
        if expiry is not None and expiry > now:
            return
        request = FetchRequest(url=url, pull_secret=pull_secret, timeout=timeout)
        try:
            await self._resolve(request, self.settings)
        except AuthFailure as error:
            who = "the pod's pull secret" if pull_secret else "no credentials"
            log.info("module access denied", extra={"url": redact_url(url), "with": who})
            raise AccessDenied(
                f"registry refused {who} for {name}: {error.cause}; a module that needs "
                "credentials is placed only for a pod whose own pull secret the registry accepts"
            ) from None
        if len(self._granted) >= MAX_REMEMBERED:
            self._granted = {k: v for k, v in self._granted.items() if v > now}
            if len(self._granted) >= MAX_REMEMBERED:
                self._granted.clear()
        self._granted[key] = now + self.ttl


def refuse_helpers(pull_secret: bytes) -> None:
    """:class:`AccessDenied` if a pod's pull secret names a credential helper (the node service
    would run it as root with the node's identity) or is not a docker config at all."""
    try:
        helpers = parse_helpers(pull_secret)
    except DockerConfigError as error:
        raise AccessDenied(f"the pod's pull secret is not a docker config: {error}") from None
    if helpers.store is not None or helpers.helpers:
        field = "credsStore" if helpers.store is not None else "credHelpers"
        raise AccessDenied(
            f"the pod's pull secret names a credential helper ({field}): the node service does "
            "not run credential helpers for pods; put the credentials in auths"
        )


def _secret_key(secret: bytes | None) -> str:
    """Remembered answers are keyed by a hash of the credentials, never the credentials."""
    return "" if not secret else hashlib.sha256(secret).hexdigest()


async def _resolve(request: FetchRequest, settings: FetchSettings) -> str:
    return await resolve_oci_digest(request, settings)


__all__ = ["AccessChecker", "AccessDenied", "FetchError", "refuse_helpers"]
