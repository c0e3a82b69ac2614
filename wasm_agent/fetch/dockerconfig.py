"""Registry credentials from a pull secret (``.dockerconfigjson``) or ``$DOCKER_CONFIG``.

Accepted shapes, per registry entry under ``auths`` (or, for the legacy ``.dockercfg``, at the top
level): ``auth`` (base64 ``user:password``), ``username``/``password``, ``identitytoken`` (an
OAuth2 refresh token) and ``registrytoken`` (a bearer token used as is). Entry keys may be a
bare host, a URL (``https://host/v1/``), and Docker Hub is ``https://index.docker.io/v1/``.

``credsStore`` / ``credHelpers`` (credential helpers) are read by :mod:`credential_helpers`,
which uses :func:`parse_docker_config` for ``auths``. Errors never quote the secret's content.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.fetch.reference import DOCKER_HUB, DOCKER_HUB_ALIASES

DOCKER_HUB_KEY = "https://index.docker.io/v1/"


class DockerConfigError(WasmAgentError, ValueError):
    """The config is not usable; the message never includes its content."""


@dataclass(frozen=True)
class Credentials:
    """Credentials for one registry; ``repr`` hides every secret."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)


ANONYMOUS = Credentials()


def normalize_registry_key(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000``; Docker Hub aliases -> ``index.docker.io``."""
    key = key.strip()
    try:
        host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
    except ValueError:  # e.g. an unbalanced '[' (IPv6 literal)
        raise DockerConfigError("an auths key is not a registry address") from None
    host = host.lower()
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def _entry(raw: object) -> Credentials:
    if not isinstance(raw, dict):
        raise DockerConfigError("an auths entry is not an object")
    username = raw.get("username") or ""
    password = raw.get("password") or ""
    auth = raw.get("auth") or ""
    if not all(isinstance(v, str) for v in (username, password, auth)):
        raise DockerConfigError("an auths entry has a non-string field")
    if auth:
        try:
            decoded = base64.b64decode(auth, validate=False).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: not ASCII
            raise DockerConfigError("an auths entry has an 'auth' that is not base64") from None
        if ":" not in decoded:
            raise DockerConfigError("an auths entry has an 'auth' that is not user:password")
        username, password = decoded.split(":", 1)
    identity = raw.get("identitytoken") or ""
    registry_token = raw.get("registrytoken") or ""
    if not isinstance(identity, str) or not isinstance(registry_token, str):
        raise DockerConfigError("an auths entry has a non-string token")
    return Credentials(username, password, identity, registry_token)


def parse_docker_config(data: bytes) -> dict[str, Credentials]:
    """Parse a docker config (``config.json``, ``.dockerconfigjson`` or ``.dockercfg``).

    Returns credentials keyed by normalized registry host. Raises :class:`DockerConfigError`.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DockerConfigError("not valid JSON") from None
    except RecursionError:  # json nests one C stack frame per level
        raise DockerConfigError("JSON nested too deeply") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise DockerConfigError("not a JSON object")
    auths = doc.get("auths")
    if auths is None:
        # Legacy .dockercfg: host -> entry at the top level. A config.json with only other
        # settings (credsStore, proxies, ...) has no credentials.
        auths = {k: v for k, v in doc.items() if isinstance(v, dict) and ("auth" in v)}
    if not isinstance(auths, dict):
        raise DockerConfigError("'auths' is not an object")
    out: dict[str, Credentials] = {}
    for key, raw in auths.items():
        host = normalize_registry_key(str(key))
        creds = _entry(raw)
        # An exact host key wins over URL forms of the same host; otherwise first wins.
        if host not in out or str(key).strip().lower() == host:
            out[host] = creds
    return out


def lookup(config: dict[str, Credentials], registry: str) -> Credentials:
    """Credentials for ``registry`` (``host[:port]``) or :data:`ANONYMOUS`."""
    return config.get(normalize_registry_key(registry), ANONYMOUS)


def credentials_from_pull_secret(secret: bytes, registry: str) -> Credentials:
    """Credentials for ``registry`` in a pull secret; raises :class:`DockerConfigError`."""
    if not secret.strip():
        raise DockerConfigError("pull secret is empty")
    return lookup(parse_docker_config(secret), registry)


def credentials_from_docker_config(directory: Path | None, registry: str) -> Credentials:
    """Credentials for ``registry`` from ``<directory>/config.json`` (``$DOCKER_CONFIG``).

    A missing directory or file means anonymous; an unreadable or malformed file raises.
    """
    if directory is None:
        return ANONYMOUS
    path = directory / "config.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ANONYMOUS
    except OSError as exc:
        raise DockerConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return lookup(parse_docker_config(data), registry)
    except DockerConfigError as exc:
        raise DockerConfigError(f"{path}: {exc}") from None
