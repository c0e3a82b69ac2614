"""SSRF: a module server or registry tries to send the agent to metadata or link-local addresses.

Every case runs a real HTTP server on 127.0.0.1 that answers with a redirect (or a token
challenge) naming a forbidden address in some spelling. Must hold: the fetch fails with
:class:`BlockedAddress` (the guard refused it before any socket was opened), no module is
returned, and nothing is cached. Loopback spellings are checked with loopback blocked by
``BLOCKED_CIDRS_IN_WASM_FETCH`` and a live target behind them: the target must never be asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.registry import Registry
from tests.support.tokenserver import ISSUER, SERVICE, TokenServer
from tests.support.wasm import minimal_module
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.dispatch import fetch_module
from wasm_agent.fetch.errors import BlockedAddress, DownloadFailure
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.trust_policy import fetch_settings_from_env

WASM = minimal_module()

# 169.254.169.254 (cloud metadata) and friends, in every spelling a URL parser or inet_aton takes
METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",  # decimal
    "http://0xa9fea9fe/",  # hex
    "http://0xa9.0xfe.0xa9.0xfe/",  # dotted hex
    "http://0251.0376.0251.0376/",  # dotted octal
    "http://169.254.43518/",  # short form a.b.c
    "http://169.16689662/",  # short form a.b
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped IPv6
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped IPv6, hex
    "http://[0:0:0:0:0:ffff:169.254.169.254]/",
    "http://[fe80::1]/",  # IPv6 link-local
    "http://[fd00:ec2::254]/",  # AWS IMDS over IPv6
    "http://100.100.100.200/",  # Alibaba metadata
    "http://169.254.169.254.nip.io.invalid/",  # a name: never resolvable here, must not pass
]
# spellings of "this host": with loopback blocked, each must be refused like 127.0.0.1
# Once a finding: FetchSettings.is_blocked (core/settings.py) checked the unspecified addresses
# 0.0.0.0 and :: as themselves, but connect() to them reaches this host; now judged as loopback.
LOOPBACK_SPELLINGS = [
    "http://0.0.0.0:{port}/target.wasm",
    "http://0:{port}/target.wasm",
    "http://[::]:{port}/target.wasm",
    "http://[::1]:{port}/target.wasm",
    "http://2130706433:{port}/target.wasm",
    "http://0x7f000001:{port}/target.wasm",
    "http://127.1:{port}/target.wasm",
    "http://[::ffff:127.0.0.1]:{port}/target.wasm",
    "http://localhost:{port}/target.wasm",
]


def settings(**env: str) -> FetchSettings:
    base = {"WASM_HTTP_REQUEST_MAX_RETRIES": "0", **env}
    return fetch_settings_from_env(base)


@pytest.mark.parametrize("target", METADATA_SPELLINGS)
async def test_redirect_to_metadata_in_any_spelling(modserver: ModServer, target: str) -> None:
    """Must hold: a redirect to a metadata/link-local address fails as blocked, or is refused
    as an invalid URL before any connection (httpx rejects octal IPv4), or (a name that does
    not resolve) fails to resolve: it is never reached."""
    url = modserver.redirect("/r", target)
    with pytest.raises(DownloadFailure) as caught:
        await fetch_module(FetchRequest(url=url, timeout=10), settings())
    text = str(caught.value)
    if "nip.io" in target:
        assert "resolve" in text or "blocked" in text, text
    elif not isinstance(caught.value, BlockedAddress):
        assert "invalid URL in a redirect's Location header" in text, text
        assert "0251" not in text  # the Location is never quoted (it may hold a password)


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
async def test_loopback_spellings_blocked_when_loopback_is(
    modserver: ModServer, spelling: str
) -> None:
    """Must hold: with 127.0.0.0/8 and ::1 blocked, every spelling that reaches this host is
    refused, and the live target behind it is never requested."""
    modserver.serve("/target.wasm", WASM)
    target = spelling.format(port=modserver.port)
    blocked = settings(BLOCKED_CIDRS_IN_WASM_FETCH="127.0.0.0/8,::1/128")
    with pytest.raises(BlockedAddress):
        await fetch_module(FetchRequest(url=target, timeout=10), blocked)
    assert modserver.count("/target.wasm") == 0


@pytest.mark.registry
@pytest.mark.parametrize("realm", ["http://169.254.169.254/token", "http://[::ffff:a9fe:a9fe]/t",
                                   "http://2852039166/token"])  # fmt: skip
async def test_token_realm_at_metadata_is_blocked(
    oci_token_server: TokenServer, tmp_path: Path, realm: str
) -> None:
    """Must hold: a real registry (docker-registry, token auth) whose Bearer challenge names a
    metadata realm gets no token request sent there; the pull fails as blocked."""
    with Registry(
        tmp_path / "registry",
        token_realm=realm,
        token_cert=oci_token_server.cert_path,
        token_service=SERVICE,
        token_issuer=ISSUER,
    ) as registry:
        insecure = settings(WASM_INSECURE_REGISTRIES=registry.host)
        with pytest.raises(BlockedAddress, match="blocked"):
            request = FetchRequest(url=registry.oci_url("plugin", "v1"), timeout=20)
            await fetch_module(request, insecure)
