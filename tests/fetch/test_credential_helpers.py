"""Docker credential helpers: real helper executables written by the test, on PATH.

The first part runs helpers through :func:`resolve_credentials`; the second fetches from the real
``docker-registry`` (htpasswd) and the project's token server with credentials from helpers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

import pytest

from tests.support.credhelper import HelperDir
from wasm_agent.fetch.credential_helpers import (
    CredentialHelperError,
    CredentialHelpers,
    parse_helpers,
    resolve_credentials,
)
from wasm_agent.fetch.dockerconfig import ANONYMOUS, Credentials, DockerConfigError

SECRET = "planted-S3cret-do-not-log"


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
    deadline = time.monotonic() + 5
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
