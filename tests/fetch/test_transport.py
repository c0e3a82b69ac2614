"""The fetch client: SSRF guard at connect time, no redirects followed, TLS modes."""

from __future__ import annotations

import ipaddress

import httpcore
import httpx
import pytest

from tests.support.modserver import ModServer
from tests.support.wasm import minimal_module
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import BlockedAddress, DownloadFailure
from wasm_agent.fetch.transport import (
    TRANSPORT_ERRORS,
    AddressBlockedError,
    GuardedBackend,
    ResolveError,
    is_retryable,
    make_client,
    to_fetch_error,
)
from wasm_agent.fetch.trust_policy import fetch_settings_from_env

WASM = minimal_module()
LOOPBACK_BLOCKED = fetch_settings_from_env({"BLOCKED_CIDRS_IN_WASM_FETCH": "127.0.0.0/8"})


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "100.100.100.200",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "::ffff:100.100.100.200",
    ],
)
def test_always_blocked(address):
    assert FetchSettings().is_blocked(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "fd00::1"])
def test_loopback_and_private_allowed_by_default(address):
    assert not FetchSettings().is_blocked(address)


def test_configured_cidrs_add_to_the_built_in_ones():
    settings = fetch_settings_from_env({"BLOCKED_CIDRS_IN_WASM_FETCH": "127.0.0.0/8, 10.0.0.0/8"})
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "10.1.2.3", "169.254.169.254"):
        assert settings.is_blocked(address)
    assert not settings.is_blocked("192.168.0.1")


async def test_guard_checks_literals_and_resolved_names():
    backend = GuardedBackend(LOOPBACK_BLOCKED)
    for host in ("127.0.0.1", "localhost", "169.254.169.254", "[fe80::1%lo]"):
        with pytest.raises(AddressBlockedError):
            await backend.resolve(host, 80, timeout=2)
    assert await GuardedBackend(FetchSettings()).resolve("127.0.0.1", 80, 2) == ["127.0.0.1"]
    with pytest.raises(ResolveError, match=r"cannot resolve host nowhere\.invalid"):
        await backend.resolve("nowhere.invalid", 80, timeout=2)


async def test_blocked_before_any_connection(modserver: ModServer):
    url = modserver.serve("/m.wasm", WASM)
    async with make_client(LOOPBACK_BLOCKED) as client:
        for target in (url, modserver.url("/m.wasm", host="localhost")):
            with pytest.raises(AddressBlockedError) as info:
                await client.get(target)
            error = to_fetch_error(target, info.value)
            assert isinstance(error, BlockedAddress)
            assert error.result == "download_failure"
            assert "127.0.0.1" in str(error)
    assert modserver.count("/m.wasm") == 0


async def test_allowed_fetch_and_redirects_not_followed(modserver: ModServer):
    url = modserver.serve("/m.wasm", WASM)
    redirect = modserver.redirect("/r", "/m.wasm")
    async with make_client(FetchSettings()) as client:
        assert (await client.get(url)).content == WASM
        response = await client.get(redirect)
        assert response.status_code == 302
        assert response.headers["location"] == "/m.wasm"
    assert modserver.count("/m.wasm") == 1


async def test_tls_verified_by_name_with_sni(tls_modserver: ModServer):
    tls_modserver.serve("/m.wasm", WASM)
    trusted = tls_modserver.tls.client_context()
    async with make_client(FetchSettings(), verify=trusted) as client:
        # the socket goes to the checked IP; certificate checks still use the URL's host name
        assert (await client.get(tls_modserver.url("/m.wasm", host="localhost"))).content == WASM
    async with make_client(FetchSettings()) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(tls_modserver.url("/m.wasm"))
        error = to_fetch_error(tls_modserver.url("/m.wasm"), info.value)
        assert type(error) is DownloadFailure and "certificate verify failed" in error.cause
    async with make_client(FetchSettings(), insecure=True) as client:
        assert (await client.get(tls_modserver.url("/m.wasm"))).content == WASM


async def test_proxy_environment_is_ignored(modserver: ModServer, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://169.254.169.254:3128")
    monkeypatch.setenv("ALL_PROXY", "http://169.254.169.254:3128")
    url = modserver.serve("/m.wasm", WASM)
    async with make_client(FetchSettings()) as client:
        assert (await client.get(url)).content == WASM


async def test_transport_errors_are_mapped(modserver: ModServer):
    async with make_client(FetchSettings()) as client:
        with pytest.raises(TRANSPORT_ERRORS) as info:
            await client.get("http://127.0.0.1:1/x")
    error = to_fetch_error("http://user:pw@127.0.0.1:1/x", info.value, attempts=3)
    assert str(error) == "http://127.0.0.1:1/x: connection refused (after 3 attempts)"


class _RecordingBackend(httpcore.AnyIOBackend):
    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def connect_tcp(self, host, port, **kwargs):  # type: ignore[override]
        self.hosts.append(host)
        return await super().connect_tcp(host, port, **kwargs)


async def test_socket_goes_to_the_checked_address_not_a_second_lookup(modserver: ModServer):
    """No second resolution happens after the check, so DNS rebinding cannot bypass it."""
    modserver.serve("/m.wasm", WASM)
    inner = _RecordingBackend()
    backend = GuardedBackend(FetchSettings(), inner=inner)
    async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
        response = await pool.request("GET", modserver.url("/m.wasm", host="localhost"))
    assert response.content == WASM
    assert inner.hosts and all(ipaddress.ip_address(h).is_loopback for h in inner.hosts)


def test_blocked_is_final_other_transport_errors_retry():
    assert not is_retryable(AddressBlockedError("h", "169.254.169.254"))
    assert is_retryable(ResolveError("h", "cannot resolve host h"))
    assert is_retryable(httpx.ReadError("reset"))
    assert not is_retryable(ValueError("x"))


def test_the_system_tls_context_is_built_once_per_trust_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading the system trust store costs tens of ms per fetch: it is built once per setting."""
    from wasm_agent.fetch.transport import tls_context

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    first = tls_context()
    assert tls_context() is first
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    assert tls_context() is not first  # another trust store, another context
    assert tls_context(False) is not tls_context(False)  # unverified contexts stay per client
