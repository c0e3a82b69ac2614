"""fetch_oci authentication against real registries: htpasswd Basic and token auth."""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path

import pytest

from tests.support.modserver import self_signed_cert
from tests.support.oci_push import RawPusher, oras_push_wasm
from tests.support.registry import (
    OTHER_PASSWORD,
    OTHER_USER,
    PUSH_PASSWORD,
    PUSH_USER,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    Registry,
    unique_repo,
)
from tests.support.tokenserver import ISSUER, SERVICE, TokenServer
from tests.support.wasm import minimal_module, padded_module
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import AuthFailure, BlockedAddress
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.oci import fetch_oci

pytestmark = pytest.mark.registry


def settings_for(registry: Registry, **kw: object) -> FetchSettings:
    base: dict[str, object] = {
        "insecure_registries": frozenset({registry.host}),
        "default_fetch_timeout": 30.0,
        "http_max_retries": 2,
    }
    base.update(kw)
    return FetchSettings(**base)  # type: ignore[arg-type]


def secret(host: str, user: str, password: str, *, fields: bool = False) -> bytes:
    """A ``.dockerconfigjson`` for ``host`` (``auth`` field, or username/password fields)."""
    if fields:
        entry = {"username": user, "password": password}
    else:
        entry = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    return json.dumps({"auths": {host: entry}}).encode()


async def fetch(registry: Registry, url: str, settings: FetchSettings | None = None, **kw):
    return await fetch_oci(FetchRequest(url=url, **kw), settings or settings_for(registry))


# -- htpasswd (Basic) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_image(oci_registry_basic: Registry, tmp_path_factory: pytest.TempPathFactory):
    """(repo, module) pushed with oras and Basic auth, as users do."""
    repo, module = unique_repo(), padded_module(1500, seed=21)
    oras_push_wasm(
        oci_registry_basic.host,
        repo,
        "v1",
        module,
        tmp_path_factory.mktemp("oras"),
        username=PUSH_USER,
        password=PUSH_PASSWORD,
    )
    return repo, module


async def test_basic_auth_with_pull_secret(oci_registry_basic: Registry, basic_image) -> None:
    repo, module = basic_image
    host = oci_registry_basic.host
    for fields in (False, True):
        got = await fetch(
            oci_registry_basic,
            oci_registry_basic.oci_url(repo, "v1"),
            pull_secret=secret(host, REGISTRY_USER, REGISTRY_PASSWORD, fields=fields),
        )
        assert got.data == module


async def test_basic_auth_from_docker_config(
    oci_registry_basic: Registry, basic_image, tmp_path: Path
) -> None:
    repo, module = basic_image
    key = f"http://{oci_registry_basic.host}"  # URL-form keys match the host too
    (tmp_path / "config.json").write_bytes(secret(key, REGISTRY_USER, REGISTRY_PASSWORD))
    settings = settings_for(oci_registry_basic, docker_config_dir=tmp_path)
    got = await fetch(oci_registry_basic, oci_registry_basic.oci_url(repo, "v1"), settings)
    assert got.data == module


async def test_pull_secret_wins_over_docker_config(
    oci_registry_basic: Registry, basic_image, tmp_path: Path
) -> None:
    repo, module = basic_image
    host = oci_registry_basic.host
    (tmp_path / "config.json").write_bytes(secret(host, REGISTRY_USER, "wrong"))
    settings = settings_for(oci_registry_basic, docker_config_dir=tmp_path)
    got = await fetch(
        oci_registry_basic,
        oci_registry_basic.oci_url(repo, "v1"),
        settings,
        pull_secret=secret(host, REGISTRY_USER, REGISTRY_PASSWORD),
    )
    assert got.data == module


async def test_basic_auth_without_credentials(oci_registry_basic: Registry, basic_image) -> None:
    repo, _ = basic_image
    with pytest.raises(AuthFailure, match="requires credentials") as info:
        await fetch(oci_registry_basic, oci_registry_basic.oci_url(repo, "v1"))
    assert info.value.result == "download_failure"


async def test_basic_auth_wrong_password(oci_registry_basic: Registry, basic_image) -> None:
    repo, _ = basic_image
    password = "Wrong-Pa55word-xyzzy"
    with pytest.raises(AuthFailure, match="401") as info:
        await fetch(
            oci_registry_basic,
            oci_registry_basic.oci_url(repo, "v1"),
            pull_secret=secret(oci_registry_basic.host, REGISTRY_USER, password),
        )
    assert password not in str(info.value)
    assert base64.b64encode(f"{REGISTRY_USER}:{password}".encode()).decode() not in str(info.value)


async def test_empty_pull_secret(oci_registry_basic: Registry, basic_image) -> None:
    repo, _ = basic_image
    before = oci_registry_basic.count_requests("GET", rf"/v2/{repo}/")
    with pytest.raises(AuthFailure, match="pull secret is empty"):
        await fetch(oci_registry_basic, oci_registry_basic.oci_url(repo, "v1"), pull_secret=b"")
    assert oci_registry_basic.count_requests("GET", rf"/v2/{repo}/") == before


async def test_malformed_pull_secret_not_echoed(oci_registry_basic: Registry, basic_image) -> None:
    repo, _ = basic_image
    bad = b'{"auths": {"host": {"auth": "c2VjcmV0LXZhbHVl"}'  # truncated JSON with a secret
    with pytest.raises(AuthFailure, match="malformed pull secret") as info:
        await fetch(oci_registry_basic, oci_registry_basic.oci_url(repo, "v1"), pull_secret=bad)
    assert "c2VjcmV0" not in str(info.value) and "secret-value" not in str(info.value)


# -- token auth ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_images(oci_registry_token: Registry):
    """Images in ``alice/*``, ``bob/*`` and ``public/*`` of the token-auth registry."""
    images = {}
    with RawPusher(oci_registry_token.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        for owner, seed in (("alice", 31), ("bob", 32), ("public", 33)):
            repo, module = unique_repo(owner), padded_module(1200, seed=seed)
            pusher.push_wasm_artifact(repo, "v1", module)
            images[owner] = (repo, module)
    return images


async def test_token_auth_scoped_to_repository(
    oci_registry_token: Registry, oci_token_server: TokenServer, token_images
) -> None:
    repo, module = token_images["alice"]
    before = len(oci_token_server.requests)
    got = await fetch(
        oci_registry_token,
        oci_registry_token.oci_url(repo, "v1"),
        pull_secret=secret(oci_registry_token.host, REGISTRY_USER, REGISTRY_PASSWORD),
    )
    assert got.data == module
    asked = oci_token_server.requests[before:]
    # One token for the manifest and the blob: cached per (realm, service, scope).
    assert len(asked) == 1
    assert asked[0].user == REGISTRY_USER
    assert asked[0].asked == [f"repository:{repo}:pull"]
    assert asked[0].granted == [f"repository:{repo}:pull"]


async def test_token_auth_two_repositories_two_tokens(
    oci_registry_token: Registry, oci_token_server: TokenServer, token_images
) -> None:
    """One user, two repositories: each pull gets a token for its own repository (the bug
    that makes oras fail here is reusing one token for every scope)."""
    before = len(oci_token_server.requests)
    pull_secret = secret(oci_registry_token.host, REGISTRY_USER, REGISTRY_PASSWORD)
    for owner in ("alice", "public"):
        repo, module = token_images[owner]
        got = await fetch(
            oci_registry_token, oci_registry_token.oci_url(repo, "v1"), pull_secret=pull_secret
        )
        assert got.data == module
    scopes = [r.asked for r in oci_token_server.requests[before:]]
    assert scopes == [
        [f"repository:{token_images['alice'][0]}:pull"],
        [f"repository:{token_images['public'][0]}:pull"],
    ]


async def test_token_auth_user_without_access(
    oci_registry_token: Registry, oci_token_server: TokenServer, token_images
) -> None:
    repo, _ = token_images["bob"]
    with pytest.raises(AuthFailure, match=rf"repository:{repo}:pull") as info:
        await fetch(
            oci_registry_token,
            oci_registry_token.oci_url(repo, "v1"),
            pull_secret=secret(oci_registry_token.host, REGISTRY_USER, REGISTRY_PASSWORD),
        )
    assert REGISTRY_PASSWORD not in str(info.value)
    assert oci_token_server.requests[-1].granted == []
    assert oci_registry_token.count_blob_gets(repo) == 0
    # The owner can pull it.
    got = await fetch(
        oci_registry_token,
        oci_registry_token.oci_url(repo, "v1"),
        pull_secret=secret(oci_registry_token.host, OTHER_USER, OTHER_PASSWORD),
    )
    assert got.data == token_images["bob"][1]


async def test_token_auth_anonymous(oci_registry_token: Registry, token_images) -> None:
    repo, module = token_images["public"]
    got = await fetch(oci_registry_token, oci_registry_token.oci_url(repo, "v1"))
    assert got.data == module
    private, _ = token_images["alice"]
    with pytest.raises(AuthFailure, match="anonymous access"):
        await fetch(oci_registry_token, oci_registry_token.oci_url(private, "v1"))


async def test_token_auth_bad_password(oci_registry_token: Registry, token_images) -> None:
    repo, _ = token_images["alice"]
    password = "Not-The-Pa55word"
    with pytest.raises(AuthFailure, match="token server refused the credentials") as info:
        await fetch(
            oci_registry_token,
            oci_registry_token.oci_url(repo, "v1"),
            pull_secret=secret(oci_registry_token.host, REGISTRY_USER, password),
        )
    assert password not in str(info.value)


async def test_token_auth_identity_token_from_docker_config(
    oci_registry_token: Registry, oci_token_server: TokenServer, token_images, tmp_path: Path
) -> None:
    repo, module = token_images["alice"]
    oci_token_server.policy.identity_tokens["refresh-token-for-alice"] = REGISTRY_USER
    config = {"auths": {oci_registry_token.host: {"identitytoken": "refresh-token-for-alice"}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    settings = settings_for(oci_registry_token, docker_config_dir=tmp_path)
    got = await fetch(oci_registry_token, oci_registry_token.oci_url(repo, "v1"), settings)
    assert got.data == module
    assert oci_token_server.requests[-1].user == REGISTRY_USER


async def test_token_realm_at_blocked_address(
    oci_token_server: TokenServer, tmp_path: Path
) -> None:
    """A registry whose token realm points at a blocked address: refused before connecting."""
    realm = f"http://127.0.0.2:{oci_token_server.port}/token"
    with Registry(
        tmp_path / "reg",
        token_realm=realm,
        token_cert=oci_token_server.cert_path,
        token_service=SERVICE,
        token_issuer=ISSUER,
    ) as registry:
        settings = settings_for(registry, blocked_networks=(ipaddress.ip_network("127.0.0.2/32"),))
        before = len(oci_token_server.requests)
        with pytest.raises(BlockedAddress, match=r"127\.0\.0\.2"):
            await fetch(
                registry,
                registry.oci_url("alice/x", "v1"),
                settings,
                pull_secret=secret(registry.host, REGISTRY_USER, REGISTRY_PASSWORD),
            )
        assert len(oci_token_server.requests) == before
        assert registry.count_requests("GET", r"^/v2/alice/x/manifests/") == 1


async def test_registry_token_used_as_bearer(
    oci_registry_token: Registry, oci_token_server: TokenServer, token_images
) -> None:
    repo, module = token_images["alice"]
    access = [{"type": "repository", "name": repo, "actions": ["pull"]}]
    token = oci_token_server.issue(REGISTRY_USER, SERVICE, access)
    pull_secret = json.dumps({"auths": {oci_registry_token.host: {"registrytoken": token}}})
    before = len(oci_token_server.requests)
    got = await fetch(
        oci_registry_token, oci_registry_token.oci_url(repo, "v1"), pull_secret=pull_secret.encode()
    )
    assert got.data == module
    assert len(oci_token_server.requests) == before  # no token request: the given one is used


async def test_basic_registry_minimal_module_roundtrip(oci_registry_basic: Registry) -> None:
    """Raw-HTTP push with Basic auth (Docker format), pulled with the same credentials."""
    repo = unique_repo()
    with RawPusher(oci_registry_basic.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        pushed = pusher.push_docker_image(repo, "v1", minimal_module())
    got = await fetch(
        oci_registry_basic,
        oci_registry_basic.oci_url(repo, digest=pushed.digest),
        pull_secret=secret(oci_registry_basic.host, PUSH_USER, PUSH_PASSWORD),
    )
    assert got.data == minimal_module()


async def test_plain_http_realm_refused_for_a_secure_registry(
    oci_token_server: TokenServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTPS registry whose token realm is plain HTTP: credentials are not sent."""
    tls = self_signed_cert(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))  # the registry is trusted, not insecure
    with Registry(
        tmp_path / "reg",
        token_realm=oci_token_server.realm,
        token_cert=oci_token_server.cert_path,
        token_service=SERVICE,
        token_issuer=ISSUER,
        tls=tls,
    ) as registry:
        before = len(oci_token_server.requests)
        with pytest.raises(AuthFailure, match="plain HTTP"):
            await fetch_oci(
                FetchRequest(
                    url=registry.oci_url("alice/x", "v1"),
                    pull_secret=secret(registry.host, REGISTRY_USER, REGISTRY_PASSWORD),
                ),
                FetchSettings(default_fetch_timeout=30.0),
            )
        assert len(oci_token_server.requests) == before


async def test_logs_never_carry_credentials(
    oci_registry_token: Registry, token_images, caplog: pytest.LogCaptureFixture
) -> None:
    repo, _ = token_images["alice"]
    pull_secret = secret(oci_registry_token.host, REGISTRY_USER, REGISTRY_PASSWORD)
    with caplog.at_level("DEBUG"):
        await fetch(
            oci_registry_token, oci_registry_token.oci_url(repo, "v1"), pull_secret=pull_secret
        )
        with pytest.raises(AuthFailure):
            await fetch(
                oci_registry_token,
                oci_registry_token.oci_url(token_images["bob"][0], "v1"),
                pull_secret=pull_secret,
            )
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert "fetched wasm image" in caplog.text
    assert REGISTRY_PASSWORD not in text
    assert base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode() not in text
    assert "eyJ" not in text  # no JWT (base64 of '{"') in any record
