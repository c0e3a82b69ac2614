"""Registry authentication: ``WWW-Authenticate`` challenges, Basic, and Bearer tokens.

Bearer tokens follow the Docker registry token spec: GET the realm with ``service`` and
``scope`` (Basic credentials if any), or POST an OAuth2 ``refresh_token`` grant for an identity
token. Tokens are cached per (realm, service, scope), never shared across scopes. Neither
credentials nor tokens ever reach a log line or an error message.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass, field

import httpx

from wasm_agent.core.logs import redact_url
from wasm_agent.fetch.dockerconfig import ANONYMOUS, Credentials
from wasm_agent.fetch.errors import AuthFailure

log = logging.getLogger(__name__)

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')
_MIN_TOKEN_LIFETIME = 60.0  # the token spec's default when expires_in is missing


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` lowercased, ``params`` by lowercase key."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> Challenge:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (or ``Basic realm=...``)."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            break
        value = match.group(2)
        value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group(3)
        params[match.group(1).lower()] = value
        pos = match.end()
    return Challenge(scheme.lower(), params)


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass
class _Token:
    value: str
    expires: float


class RegistryAuth:
    """Authorization headers for one registry and one set of credentials.

    ``client`` is the (guarded) client that also talks to token realms; ``allow_http_realm``
    permits a plain-HTTP realm (only when the registry itself is an insecure one).
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials = ANONYMOUS,
        *,
        allow_http_realm: bool = False,
    ) -> None:
        self.url = url  # the module URL, for error messages
        self.credentials = credentials
        self.allow_http_realm = allow_http_realm
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._scheme: str | None = None  # "basic" or "bearer" once a challenge was seen
        self._bearer: tuple[str, str] | None = None  # (realm, service)
        self.token_requests = 0

    def header(self, scope: str) -> str | None:
        """The Authorization header to send for ``scope`` before any challenge, if known."""
        if self._scheme == "basic" and not self.credentials.empty:
            return basic_header(self.credentials)
        if self._scheme == "bearer" and self._bearer is not None:
            token = self._tokens.get((*self._bearer, scope))
            if token is not None and token.expires > time.monotonic():
                return "Bearer " + token.value
        return None

    async def answer(self, client: httpx.AsyncClient, response: httpx.Response, scope: str) -> str:
        """Answer a 401 for ``scope``: return the header to retry with, or raise AuthFailure."""
        raw = response.headers.get("www-authenticate", "")
        challenge = parse_challenge(raw) if raw else Challenge("")
        if challenge.scheme == "basic":
            if self.credentials.empty or not self.credentials.username:
                raise AuthFailure(self.url, "registry requires credentials and none were found")
            self._scheme = "basic"
            return basic_header(self.credentials)
        if challenge.scheme == "bearer":
            realm = challenge.params.get("realm", "")
            service = challenge.params.get("service", "")
            # The registry names the scope it wants; it must be for this repository.
            wanted = challenge.params.get("scope") or scope
            if wanted != scope and not _same_repository(wanted, scope):
                wanted = scope
            self._scheme, self._bearer = "bearer", (realm, service)
            token = await self._token(client, realm, service, wanted)
            return "Bearer " + token
        raise AuthFailure(
            self.url, f"registry answered 401 with an unsupported challenge {challenge.scheme!r}"
        )

    async def _token(self, client: httpx.AsyncClient, realm: str, service: str, scope: str) -> str:
        key = (realm, service, scope)
        cached = self._tokens.get(key)
        if cached is not None and cached.expires > time.monotonic():
            return cached.value
        creds = self.credentials
        if creds.registry_token:
            self._tokens[key] = _Token(creds.registry_token, time.monotonic() + 3600.0)
            return creds.registry_token
        try:
            url = httpx.URL(realm)
        except (httpx.InvalidURL, TypeError):
            raise AuthFailure(self.url, "token realm is not a valid URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise AuthFailure(self.url, f"token realm {redact_url(realm)} is not an http(s) URL")
        if url.scheme == "http" and not self.allow_http_realm:
            raise AuthFailure(
                self.url,
                f"token realm {redact_url(realm)} is plain HTTP and the registry is not an "
                "insecure registry",
            )
        self.token_requests += 1
        log.debug(
            "requesting registry token",
            extra={"realm": redact_url(realm), "service": service, "scope": scope},
        )
        if creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "service": service,
                "scope": scope,
                "client_id": "wasm-agent",
            }
            response = await client.post(url, data=form)
        else:
            target = url.copy_add_param("service", service) if service else url
            target = target.copy_add_param("scope", scope)
            headers = {}
            if creds.username or creds.password:
                headers["authorization"] = basic_header(creds)
            response = await client.get(target, headers=headers)
        if response.status_code in (401, 403):
            what = "the credentials" if not creds.empty else "anonymous access"
            raise AuthFailure(
                self.url, f"token server refused {what} (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise AuthFailure(
                self.url, f"token server answered HTTP {response.status_code} for {scope}"
            )
        try:
            doc = response.json()
            value = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or _MIN_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError, RecursionError):
            raise AuthFailure(
                self.url, "token server answered something that is not a token"
            ) from None
        if not isinstance(value, str) or not value:
            raise AuthFailure(self.url, "token server answered without a token")
        # Renew a little early so a token does not expire between check and use.
        self._tokens[key] = _Token(value, time.monotonic() + max(1.0, lifetime - 5.0))
        return value


def _same_repository(a: str, b: str) -> bool:
    """True when both ``repository:<name>:<actions>`` scopes name the same repository."""
    return a.rsplit(":", 1)[0] == b.rsplit(":", 1)[0]


def pull_scope(repository: str) -> str:
    """The token scope for pulling ``repository``."""
    return f"repository:{repository}:pull"
