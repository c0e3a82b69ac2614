"""Docker credential helpers: real helper executables written by the test, on PATH.

The first part runs helpers through :func:`resolve_credentials`; the second fetches from the real
``docker-registry`` (htpasswd) and the project's token server with credentials from helpers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support.credhelper import HelperDir
from tests.support.oci_push import RawPusher
from tests.support.registry import (
    PUSH_PASSWORD,
    PUSH_USER,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    Registry,
    refused_port,
    unique_repo,
)
from tests.support.tokenserver import TokenServer
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.credential_helpers import (
    HELPERS,
    CredentialHelperError,
    CredentialHelpers,
    parse_helper_output,
    parse_helpers,
    resolve_credentials,
)
from wasm_agent.fetch.dockerconfig import ANONYMOUS, Credentials, DockerConfigError
from wasm_agent.fetch.errors import AuthFailure
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.oci import fetch_oci

SECRET = "planted-S3cret-do-not-log"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperDir:
    found = HelperDir(tmp_path / "bin")
    monkeypatch.setenv("PATH", found.path_with(os.environ.get("PATH", os.defpath)))
    return found


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record with all its fields (``extra=`` included)."""
    return "\n".join(str(vars(record)) for record in caplog.records)


def config(**doc: object) -> bytes:
    return json.dumps(doc).encode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_cred_helpers_answer_with_the_server_address_on_stdin(helpers: HelperDir) -> None:
    helpers.add("good", username="alice", secret=SECRET)
    runner = CredentialHelpers()
    got = await resolve_credentials(
        config(credHelpers={"reg.example:5000": "good"}), "reg.example:5000", helpers=runner
    )
    assert got.credentials == Credentials("alice", SECRET)
    assert got.helper == "good" and not got.cached
    assert helpers.stdin("good") == "reg.example:5000"


async def test_docker_hub_gets_the_v1_url(helpers: HelperDir) -> None:
    helpers.add("hub", username="u", secret=SECRET)
    got = await resolve_credentials(
        config(credsStore="hub"), "index.docker.io", helpers=CredentialHelpers()
    )
    assert got.credentials.password == SECRET
    assert helpers.stdin("hub") == "https://index.docker.io/v1/"


async def test_token_username_is_an_identity_token(helpers: HelperDir) -> None:
    helpers.add("ident", username="<token>", secret="refresh-1")
    got = await resolve_credentials(
        config(credsStore="ident"), "r.example", helpers=CredentialHelpers()
    )
    assert got.credentials == Credentials(identity_token="refresh-1")


async def test_precedence_helpers_then_auths_then_store(helpers: HelperDir) -> None:
    helpers.add("per-host", username="from-helper", secret="a")
    helpers.add("store", username="from-store", secret="b")
    doc = config(
        auths={"one.example": basic("from-auths", "c"), "two.example": basic("from-auths", "d")},
        credHelpers={"one.example": "per-host"},
        credsStore="store",
    )
    runner = CredentialHelpers()
    one = await resolve_credentials(doc, "one.example", helpers=runner)
    two = await resolve_credentials(doc, "two.example", helpers=runner)
    three = await resolve_credentials(doc, "three.example", helpers=runner)
    assert one.credentials.username == "from-helper"
    assert two.credentials.username == "from-auths" and two.helper is None
    assert three.credentials.username == "from-store"
    # an empty auths entry (what `docker login` leaves beside a credsStore) falls to the store
    empty = config(auths={"four.example": {}}, credsStore="store")
    four = await resolve_credentials(empty, "four.example", helpers=runner)
    assert four.credentials.username == "from-store"


async def test_results_are_cached_for_the_ttl_and_can_be_forgotten(helpers: HelperDir) -> None:
    helpers.add("good", username="alice", secret=SECRET)
    now = [1000.0]
    runner = CredentialHelpers(clock=lambda: now[0])
    doc = config(credsStore="good")
    first = await resolve_credentials(doc, "r.example", helpers=runner, ttl=60)
    second = await resolve_credentials(doc, "r.example", helpers=runner, ttl=60)
    assert (first.cached, second.cached) == (False, True)
    assert helpers.runs("good") == 1
    await resolve_credentials(doc, "other.example", helpers=runner, ttl=60)  # per registry
    assert helpers.runs("good") == 2
    now[0] += 61
    await resolve_credentials(doc, "r.example", helpers=runner, ttl=60)
    assert helpers.runs("good") == 3
    runner.forget("good", "r.example")
    again = await resolve_credentials(doc, "r.example", helpers=runner, ttl=60)
    assert not again.cached and helpers.runs("good") == 4


async def test_not_found_means_anonymous_and_is_not_cached(helpers: HelperDir) -> None:
    helpers.add("none", behaviour="notfound")
    runner = CredentialHelpers()
    for _ in range(2):
        got = await resolve_credentials(config(credsStore="none"), "r.example", helpers=runner)
        assert got.credentials == ANONYMOUS
    assert helpers.runs("none") == 2


async def test_hung_helper_is_killed_with_its_children(helpers: HelperDir) -> None:
    helpers.add("hang", behaviour="hang")
    started = time.monotonic()
    with pytest.raises(CredentialHelperError) as info:
        await resolve_credentials(
            config(credsStore="hang"), "r.example", helpers=CredentialHelpers(), timeout=0.5
        )
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "docker-credential-hang" in message and "r.example" in message
    assert "0.5s" in message and "killed" in message
    child = helpers.child_pid("hang")
    assert child is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie no one reaped yet is dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("fail", "exited with status 1"),
        ("garbage", "not a JSON object"),
    ],
)
async def test_failing_helpers_give_clear_errors_without_their_output(
    helpers: HelperDir, caplog: pytest.LogCaptureFixture, behaviour: str, expected: str
) -> None:
    helpers.add("bad", behaviour=behaviour, secret=SECRET)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CredentialHelperError) as info:
        await resolve_credentials(
            config(credsStore="bad"), "r.example", helpers=CredentialHelpers()
        )
    assert expected in str(info.value)
    assert "docker-credential-bad" in str(info.value) and "r.example" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in logged(caplog)
    assert helpers.runs("bad") == 1


async def test_missing_helper_names_the_executable(helpers: HelperDir) -> None:
    with pytest.raises(CredentialHelperError, match=r"docker-credential-ecr-login .*not found"):
        await resolve_credentials(
            config(credHelpers={"r.example": "ecr-login"}), "r.example", helpers=CredentialHelpers()
        )


async def test_answer_is_never_logged(helpers: HelperDir, caplog: pytest.LogCaptureFixture) -> None:
    helpers.add("good", username="alice", secret=SECRET)
    caplog.set_level(logging.DEBUG)
    got = await resolve_credentials(
        config(credsStore="good"), "r.example", helpers=CredentialHelpers()
    )
    assert got.credentials.password == SECRET
    assert "docker-credential-good" in logged(caplog)
    assert SECRET not in logged(caplog)
    assert SECRET not in repr(got)


@pytest.mark.parametrize(
    "doc",
    [
        {"credsStore": "../../bin/sh"},
        {"credsStore": "a b"},
        {"credsStore": 5},
        {"credHelpers": ["x"]},
        {"credHelpers": {"r.example": "/usr/bin/env"}},
    ],
)
def test_helper_names_cannot_be_paths(doc: dict[str, object]) -> None:
    with pytest.raises(DockerConfigError) as info:
        parse_helpers(json.dumps(doc).encode())
    assert "/usr/bin/env" not in str(info.value)


# -- fetches from real registries with helper credentials ------------------------------------


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """The process-wide helper cache, empty before and after the test."""
    HELPERS.clear()
    yield
    HELPERS.clear()


def settings_for(registry: Registry, config_dir: Path, **kw: Any) -> FetchSettings:
    base: dict[str, Any] = {
        "insecure_registries": frozenset({registry.host}),
        "default_fetch_timeout": 20.0,
        "http_max_retries": 2,
        "docker_config_dir": config_dir,
    }
    base.update(kw)
    return FetchSettings(**base)


@pytest.fixture(scope="module")
def basic_repo(oci_registry_basic: Registry) -> tuple[str, bytes]:
    repo, module = unique_repo(), padded_module(1200, seed=51)
    with RawPusher(oci_registry_basic.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        pusher.push_wasm_artifact(repo, "v1", module)
    return repo, module


def write_config(directory: Path, doc: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(doc))
    return directory


@pytest.mark.registry
async def test_htpasswd_registry_with_cred_helper(
    oci_registry_basic: Registry,
    basic_repo: tuple[str, bytes],
    helpers: HelperDir,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fresh_cache: None,
) -> None:
    repo, module = basic_repo
    host = oci_registry_basic.host
    helpers.add("htpasswd", username=REGISTRY_USER, secret=REGISTRY_PASSWORD)
    config_dir = write_config(tmp_path / "docker", {"credHelpers": {host: "htpasswd"}})
    settings = settings_for(oci_registry_basic, config_dir)
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        got = await fetch_oci(FetchRequest(oci_registry_basic.oci_url(repo, "v1")), settings)
        assert got.data == module
    assert helpers.runs("htpasswd") == 1  # cached per registry
    assert helpers.stdin("htpasswd") == host
    assert REGISTRY_PASSWORD not in logged(caplog)


@pytest.mark.registry
async def test_pull_secret_with_creds_store(
    oci_registry_basic: Registry,
    basic_repo: tuple[str, bytes],
    helpers: HelperDir,
    tmp_path: Path,
    fresh_cache: None,
) -> None:
    repo, module = basic_repo
    helpers.add("store", username=REGISTRY_USER, secret=REGISTRY_PASSWORD)
    secret = json.dumps({"auths": {}, "credsStore": "store"}).encode()
    got = await fetch_oci(
        FetchRequest(oci_registry_basic.oci_url(repo, "v1"), pull_secret=secret),
        settings_for(oci_registry_basic, tmp_path / "none"),
    )
    assert got.data == module


@pytest.mark.registry
async def test_refused_cached_answer_asks_the_helper_again(
    oci_registry_basic: Registry,
    basic_repo: tuple[str, bytes],
    helpers: HelperDir,
    tmp_path: Path,
    fresh_cache: None,
) -> None:
    """An expired token in the cache (ECR's 12 h) costs one refused request, not the fetch."""
    repo, module = basic_repo
    host = oci_registry_basic.host
    helpers.add("rotating", username=REGISTRY_USER, secret="expired-token")
    config_dir = write_config(tmp_path / "docker", {"credHelpers": {host: "rotating"}})
    settings = settings_for(oci_registry_basic, config_dir)
    url = oci_registry_basic.oci_url(repo, "v1")
    with pytest.raises(AuthFailure):  # a fresh answer that is refused is an error
        await fetch_oci(FetchRequest(url), settings)
    assert helpers.runs("rotating") == 1
    await HELPERS.get("rotating", host)  # cache the stale answer
    helpers.add("rotating", username=REGISTRY_USER, secret=REGISTRY_PASSWORD)
    got = await fetch_oci(FetchRequest(url), settings)
    assert got.data == module
    assert helpers.runs("rotating") == 3


@pytest.mark.registry
async def test_identity_token_from_helper_at_the_token_server(
    oci_registry_token: Registry,
    oci_token_server: TokenServer,
    helpers: HelperDir,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fresh_cache: None,
) -> None:
    repo, module = f"alice/{unique_repo()}", padded_module(1300, seed=52)
    with RawPusher(oci_registry_token.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        pusher.push_wasm_artifact(repo, "v1", module)
    refresh = "refresh-" + SECRET
    oci_token_server.policy.identity_tokens[refresh] = REGISTRY_USER
    helpers.add("ident", username="<token>", secret=refresh)
    config_dir = write_config(tmp_path / "docker", {"credsStore": "ident"})
    caplog.set_level(logging.DEBUG)
    before = len(oci_token_server.requests)
    got = await fetch_oci(
        FetchRequest(oci_registry_token.oci_url(repo, "v1")),
        settings_for(oci_registry_token, config_dir),
    )
    assert got.data == module
    asked = oci_token_server.requests[before:]
    assert [r.user for r in asked] == [REGISTRY_USER]  # only a refresh_token grant names alice
    assert SECRET not in logged(caplog)


@pytest.mark.registry
@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("hang", "did not answer within 1s and was killed"),
        ("fail", "exited with status 1"),
        ("garbage", "not a JSON object"),
        ("missing", "was not found on PATH"),
    ],
)
async def test_failing_helper_fails_the_fetch_clearly(
    oci_registry_basic: Registry,
    basic_repo: tuple[str, bytes],
    helpers: HelperDir,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fresh_cache: None,
    behaviour: str,
    expected: str,
) -> None:
    repo, _ = basic_repo
    host = oci_registry_basic.host
    if behaviour != "missing":
        helpers.add("broken", behaviour=behaviour, secret=SECRET)
    config_dir = write_config(tmp_path / "docker", {"credHelpers": {host: "broken"}})
    # 1 s for the helper that hangs; the others answer at once, however loaded the machine
    limit = 1.0 if behaviour == "hang" else 20.0
    settings = settings_for(oci_registry_basic, config_dir, credential_helper_timeout=limit)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(AuthFailure) as info:
        await fetch_oci(FetchRequest(oci_registry_basic.oci_url(repo, "v1")), settings)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert expected in message and "docker-credential-broken" in message and host in message
    assert SECRET not in message and SECRET not in logged(caplog)


@pytest.mark.registry
def test_prefetch_cli_with_helper_and_mirror_from_the_environment(
    oci_registry_basic: Registry,
    basic_repo: tuple[str, bytes],
    helpers: HelperDir,
    tmp_path: Path,
) -> None:
    """The real CLI: DOCKER_CONFIG names a helper, WASM_AGENT_REGISTRY_CONFIG_DIR a dead
    mirror first; the module arrives from the registry and the secret is printed nowhere."""
    repo, module = basic_repo
    host = oci_registry_basic.host
    helpers.add("cli", username=REGISTRY_USER, secret=REGISTRY_PASSWORD)
    docker = write_config(tmp_path / "docker", {"credHelpers": {host: "cli"}})
    hosts = tmp_path / "hosts" / host
    hosts.mkdir(parents=True)
    with refused_port() as port:  # refuses connections, and no other test can take it
        dead = f"http://127.0.0.1:{port}"
        toml = f'server = "{oci_registry_basic.url}"\n[host."{dead}"]\n'
        (hosts / "hosts.toml").write_text(toml)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DOCKER_CONFIG": str(docker),
            "WASM_AGENT_REGISTRY_CONFIG_DIR": str(tmp_path / "hosts"),
            "WASM_AGENT_CREDENTIAL_HELPER_TIMEOUT": "30s",
        }
        url = oci_registry_basic.oci_url(repo, "v1")
        command = [sys.executable, "-m", "wasm_agent", "prefetch", "--log-level", "debug", url]
        result = subprocess.run(
            [*command, "--cache-dir", str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cache" / "modules" / f"{sha256_hex(module)}.wasm").read_bytes() == module
    assert helpers.runs("cli") == 1 and helpers.stdin("cli") == host
    assert "registry host failed" in result.stderr  # the dead mirror was tried first
    assert REGISTRY_PASSWORD not in result.stdout + result.stderr


@hypothesis_settings(max_examples=300, deadline=None)
@given(before=st.binary(max_size=100), after=st.binary(max_size=100))
def test_any_helper_output_is_credentials_or_a_clear_error(before: bytes, after: bytes) -> None:
    out = before + SECRET.encode() + after
    try:
        parse_helper_output(out, "docker-credential-x", "r.example")
    except CredentialHelperError as error:
        assert "docker-credential-x" in str(error) and "r.example" in str(error)
        assert SECRET not in str(error)
