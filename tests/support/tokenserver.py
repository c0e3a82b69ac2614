"""A real Docker registry token server (distribution's "token" auth) for tests.

It issues RS256 JWTs whose header carries the signing certificate in ``x5c``; the registry
trusts them through ``rootcertbundle`` (:attr:`TokenServer.cert_path`). Basic credentials are
checked, and only the requested ``repository:<name>:<actions>`` scopes the user may use are
granted, so a client that asks for the wrong scope gets a token the registry refuses.

Requests are recorded in :attr:`TokenServer.requests` (user, scopes asked, scopes granted).
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ISSUER = "wasm-agent-test-issuer"
SERVICE = "wasm-agent-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    """One request the token server answered."""

    user: str | None
    asked: list[str]
    granted: list[str]
    status: int


@dataclass
class TokenPolicy:
    """Who may do what: ``access[user][repository] = {"pull", "push"}``.

    ``anonymous`` lists what requests without credentials get; ``identity_tokens`` maps an
    OAuth2 refresh token (a docker config ``identitytoken``) to a user.
    """

    users: dict[str, str] = field(default_factory=dict)
    access: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    anonymous: dict[str, set[str]] = field(default_factory=dict)
    identity_tokens: dict[str, str] = field(default_factory=dict)

    def allowed(self, user: str | None, repository: str) -> set[str]:
        """Actions ``user`` (None: anonymous) may use on ``repository`` (keys may be globs).

        Signed-in users may also do what anonymous users may.
        """
        table = dict(self.anonymous)  # what anyone may do, signed in or not
        out: set[str] = set()
        for pattern, actions in [*table.items(), *self.access.get(user or "", {}).items()]:
            if fnmatch.fnmatchcase(repository, pattern):
                out |= actions
        return out


class TokenServer:
    """Start with ``with TokenServer(directory, policy) as ts:``; ``ts.realm`` is the URL."""

    def __init__(self, directory: Path, policy: TokenPolicy, host: str = "127.0.0.1") -> None:
        self.policy = policy
        self.requests: list[TokenRequest] = []
        self.cert_path = directory / "token-root.pem"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasm-agent test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode()
        self._server = ThreadingHTTPServer((host, 0), _make_handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def realm(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}/token"

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- token issuing -------------------------------------------------------------------------

    def grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        """The ``access`` claim for ``scopes``: only repository actions the user may use."""
        access: list[dict[str, Any]] = []
        for scope in scopes:
            for item in scope.split(" "):
                parts = item.split(":")
                if len(parts) < 3 or parts[0] != "repository":
                    continue
                repository, actions = ":".join(parts[1:-1]), set(parts[-1].split(","))
                granted = sorted(actions & self.policy.allowed(user, repository))
                if granted:
                    access.append({"type": "repository", "name": repository, "actions": granted})
        return access

    def issue(self, user: str | None, service: str, access: list[dict[str, Any]]) -> str:
        """A signed JWT the registry accepts."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)


def _make_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            payload = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            if status == 401:
                self.send_header("www-authenticate", 'Basic realm="token"')
            self.end_headers()
            self.wfile.write(payload)

        def _basic_user(self) -> tuple[bool, str | None]:
            header = self.headers.get("authorization")
            if not header:
                return True, None
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                return False, None
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False, None
            return server.policy.users.get(user) == password, user

        def _answer(self, user: str | None, ok: bool, params: dict[str, list[str]]) -> None:
            scopes = params.get("scope", [])
            if not ok:
                server.requests.append(TokenRequest(user, scopes, [], 401))
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            service = params.get("service", [SERVICE])[0]
            access = server.grant(user, scopes)
            granted = [f"repository:{a['name']}:{','.join(a['actions'])}" for a in access]
            server.requests.append(TokenRequest(user, scopes, granted, 200))
            token = server.issue(user, service, access)
            doc = {"token": token, "access_token": token, "expires_in": 300}
            doc["issued_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._reply(200, doc)

        def do_GET(self) -> None:
            ok, user = self._basic_user()
            self._answer(user, ok, parse_qs(urlsplit(self.path).query))

        def do_POST(self) -> None:  # OAuth2: refresh_token (identity token) or password grant
            length = int(self.headers.get("content-length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            grant = form.get("grant_type", [""])[0]
            if grant == "refresh_token":
                user = server.policy.identity_tokens.get(form.get("refresh_token", [""])[0])
                ok = user is not None
            elif grant == "password":
                user = form.get("username", [""])[0]
                ok = server.policy.users.get(user) == form.get("password", [None])[0]
            else:
                user, ok = None, False
            self._answer(user, ok, form)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
