"""Credentials from pull secrets and $DOCKER_CONFIG/config.json."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from wasm_agent.fetch.dockerconfig import (
    ANONYMOUS,
    Credentials,
    DockerConfigError,
    credentials_from_docker_config,
    credentials_from_pull_secret,
    parse_docker_config,
)


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _config(auths: dict) -> bytes:
    return json.dumps({"auths": auths}).encode()


def test_auth_field_and_host_forms() -> None:
    config = parse_docker_config(
        _config(
            {
                "registry.example.com": {"auth": _auth("u1", "p:w")},
                "https://other.example.com:5000/v1/": {"auth": _auth("u2", "p2")},
                "http://plain.example.com": {"username": "u3", "password": "p3"},
            }
        )
    )
    assert config["registry.example.com"] == Credentials("u1", "p:w")
    assert config["other.example.com:5000"] == Credentials("u2", "p2")
    assert config["plain.example.com"] == Credentials("u3", "p3")


def test_docker_hub_key() -> None:
    secret = _config({"https://index.docker.io/v1/": {"auth": _auth("hub", "pw")}})
    assert credentials_from_pull_secret(secret, "index.docker.io") == Credentials("hub", "pw")


def test_identity_and_registry_tokens() -> None:
    config = parse_docker_config(
        _config(
            {
                "a.example": {"identitytoken": "refresh", "auth": _auth("<token>", "")},
                "b.example": {"registrytoken": "bearer"},
            }
        )
    )
    assert config["a.example"].identity_token == "refresh"
    assert config["b.example"].registry_token == "bearer"


def test_unknown_registry_is_anonymous() -> None:
    secret = _config({"a.example": {"auth": _auth("u", "p")}})
    assert credentials_from_pull_secret(secret, "b.example:5000") is ANONYMOUS
    assert credentials_from_pull_secret(b"null", "a.example") is ANONYMOUS


def test_legacy_dockercfg() -> None:
    secret = json.dumps({"a.example": {"auth": _auth("u", "p"), "email": "x@y"}}).encode()
    assert credentials_from_pull_secret(secret, "a.example") == Credentials("u", "p")


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"auths": []}', "not an object"),
        (b'{"auths": {"a.example": {"auth": "!!!notbase64"}}}', "auth"),
        (b'{"auths": {"a.example": {"auth": "' + base64.b64encode(b"nocolon") + b'"}}}', "user"),
        (b'{"auths": {"a.example": "string"}}', "not an object"),
    ],
)
def test_malformed(secret: bytes, message: str) -> None:
    with pytest.raises(DockerConfigError, match=message) as info:
        credentials_from_pull_secret(secret, "a.example")
    assert "notbase64" not in str(info.value)


def test_repr_hides_secrets() -> None:
    creds = Credentials("user", "hunter2", "idtok", "regtok")
    assert "hunter2" not in repr(creds) and "idtok" not in repr(creds)


def test_docker_config_dir(tmp_path: Path) -> None:
    assert credentials_from_docker_config(None, "a.example") is ANONYMOUS
    assert credentials_from_docker_config(tmp_path, "a.example") is ANONYMOUS  # no config.json
    (tmp_path / "config.json").write_bytes(_config({"a.example": {"auth": _auth("u", "p")}}))
    assert credentials_from_docker_config(tmp_path, "a.example") == Credentials("u", "p")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(DockerConfigError, match=r"config\.json"):
        credentials_from_docker_config(tmp_path, "a.example")
