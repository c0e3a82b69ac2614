"""containerd ``hosts.toml``: parsing, then mirrors, fallback, CAs and mTLS on real registries."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support.mirror import PullThroughRegistry, TlsRegistry
from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, refused_port, unique_repo
from tests.support.tls import TlsFiles, generate
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.agent.fetch_settings import fetch_settings_from_env
from wasm_agent.core import config
from wasm_agent.core.config import ConfigError
from wasm_agent.core.settings import FetchSettings, build_fetch_settings
from wasm_agent.fetch.errors import DownloadFailure
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.oci import fetch_oci
from wasm_agent.fetch.registry_hosts import (
    HostsConfigError,
    host_dirs,
    load_hosts,
)


def write_hosts(root: Path, host: str, text: str) -> Path:
    directory = root / host
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.toml"
    path.write_text(text)
    return path


def test_no_config_means_the_registry_over_https(tmp_path: Path) -> None:
    for config_dir in (None, tmp_path):
        hosts = load_hosts(config_dir, "reg.example:5000")
        assert [e.url for e in hosts.endpoints] == ["https://reg.example:5000/v2"]
        assert not hosts.endpoints[0].mirror


def test_mirrors_in_order_then_the_server(tmp_path: Path) -> None:
    path = write_hosts(
        tmp_path,
        "reg.example:5000",
        """
server = "https://upstream.example"
ca = "up.pem"

[host."https://m1.example/prefix"]
  capabilities = ["pull"]
  ca = ["/abs/m1.pem", "rel.pem"]
  client = [["c.pem", "k.pem"], ["both.pem", ""]]
  skip_verify = true

[host."http://m2.example:8080/api/v2/upstream"]
  capabilities = ["pull", "resolve"]
  override_path = true
  [host."http://m2.example:8080/api/v2/upstream".header]
    x-mirror = ["a", "b"]
""",
    )
    hosts = load_hosts(tmp_path, "reg.example:5000")
    assert hosts.source == path
    m1, m2, server = hosts.endpoints
    assert m1.url == "https://m1.example/prefix/v2" and m1.mirror
    assert m1.capabilities == {"pull"} and not m1.can("resolve")
    assert m1.ca == (Path("/abs/m1.pem"), path.parent / "rel.pem")
    assert m1.client == (
        (path.parent / "c.pem", path.parent / "k.pem"),
        (path.parent / "both.pem", None),
    )
    assert m1.skip_verify
    assert m2.url == "http://m2.example:8080/api/v2/upstream" and m2.can("resolve")
    assert m2.headers == (("x-mirror", "a"), ("x-mirror", "b"))
    assert server.url == "https://upstream.example/v2" and not server.mirror
    assert server.ca == (path.parent / "up.pem",)
    assert [e.host for e in hosts.for_capability("resolve")] == [
        "m2.example:8080",
        "upstream.example",
    ]


def test_directory_names_and_default(tmp_path: Path) -> None:
    assert host_dirs("reg.example:5000") == ["reg.example_5000_", "reg.example:5000", "_default"]
    assert host_dirs("index.docker.io")[0] == "docker.io"
    write_hosts(tmp_path, "_default", '[host."https://everything.example"]\n')
    write_hosts(tmp_path, "docker.io", 'server = "https://docker.io"\n')
    assert load_hosts(tmp_path, "other.example").endpoints[0].host == "everything.example"
    assert load_hosts(tmp_path, "other.example").endpoints[1].host == "other.example"
    hub = load_hosts(tmp_path, "index.docker.io")
    assert [e.host for e in hub.endpoints] == ["index.docker.io"]


def test_docker_certs_d_layout(tmp_path: Path) -> None:
    directory = tmp_path / "reg.example"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key"):
        (directory / name).write_text("x")
    (endpoint,) = load_hosts(tmp_path, "reg.example").endpoints
    assert endpoint.ca == (directory / "ca.crt",)
    assert endpoint.client == ((directory / "client.cert", directory / "client.key"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = [", "not valid TOML"),
        ("server = 5", "'server' must be a URL string"),
        ('server = "ftp://x"', "http:// or https://"),
        ('server = "https://u:p@x"', "must not carry credentials"),
        ('[host."https://m"]\ncapabilities = ["fly"]', "unknown capabilities"),
        ('[host."https://m"]\nskip_verify = "yes"', "'skip_verify' must be true or false"),
        ('[host."https://m"]\nca = 3', "'ca' must be a path"),
        ('[host."https://m"]\nclient = [["a"]]', "[certificate, key] pair"),
        ('[host."https://m".header]\nauthorization = "x"', "may not be set"),
        ("host = 1", "'host' must be a table"),
    ],
)
def test_bad_hosts_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write_hosts(tmp_path, "reg.example", text)
    with pytest.raises(HostsConfigError) as info:
        load_hosts(tmp_path, "reg.example")
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unloadable_ca_names_the_file(tmp_path: Path) -> None:
    write_hosts(tmp_path, "reg.example", 'ca = "missing.pem"\n')
    (endpoint,) = load_hosts(tmp_path, "reg.example").endpoints
    with pytest.raises(HostsConfigError, match=r"missing\.pem"):
        endpoint.ssl_context()


# -- against real registries --------------------------------------------------------------------


def settings_for(config_dir: Path | None, *insecure: str, **kw: Any) -> FetchSettings:
    base: dict[str, Any] = {
        "registry_config_dir": config_dir,
        "insecure_registries": frozenset(insecure),
        "default_fetch_timeout": 20.0,
        "http_max_retries": 2,
    }
    base.update(kw)
    return FetchSettings(**base)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("upstream")) as reg:
        yield reg


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, upstream: Registry) -> Iterator[Registry]:
    with PullThroughRegistry(tmp_path_factory.mktemp("mirror"), upstream.url) as reg:
        yield reg


def push(registry: Registry, seed: int, *, verify: Any = False) -> tuple[str, bytes, str]:
    """(repo, module, manifest digest) of a fresh Wasm artifact tagged v1."""
    repo, module = unique_repo(), padded_module(1500, seed=seed)
    with RawPusher(registry.url, verify=verify) as pusher:
        if isinstance(verify, ssl.SSLContext):
            pusher.client = httpx.Client(timeout=30.0, verify=verify)
        pushed = pusher.push_wasm_artifact(repo, "v1", module)
    return repo, module, pushed.digest


def mirror_hosts(
    config_dir: Path, upstream: Registry, *mirrors: str, caps: str = '["pull", "resolve"]'
) -> None:
    tables = "".join(f'[host."{m}"]\n  capabilities = {caps}\n' for m in mirrors)
    write_hosts(config_dir, upstream.host, f'server = "{upstream.url}"\n{tables}')


@pytest.mark.registry
async def test_pull_through_mirror_serves_and_caches(
    upstream: Registry, mirror: Registry, tmp_path: Path
) -> None:
    repo, module, digest = push(upstream, 41)
    mirror_hosts(tmp_path, upstream, mirror.url)
    settings = settings_for(tmp_path)
    url = upstream.oci_url(repo, "v1")
    got = await fetch_oci(FetchRequest(url, sha256=digest), settings)
    assert got.data == module
    # The mirror stores the blob with a GET of its own after streaming it to us: count the
    # upstream's blob GETs once it has (a second fetch before that would go upstream too).
    await asyncio.to_thread(mirror.wait_for_blob, repo, "sha256:" + sha256_hex(module))
    upstream_blob_gets = upstream.count_blob_gets(repo)
    assert upstream_blob_gets >= 1  # the mirror filled its cache from the upstream
    got = await fetch_oci(FetchRequest(url, sha256=digest), settings)
    assert got.data == module
    assert upstream.count_blob_gets(repo) == upstream_blob_gets  # served from the mirror's cache
    gets = [p for m, p in mirror.requests() if m == "GET" and f"/v2/{repo}/" in p]
    assert len(gets) == 4  # manifest and blob, twice, all from the mirror
    assert all(f"ns={upstream.host}" in p for p in gets)


@pytest.mark.registry
async def test_mirror_down_falls_back_to_the_upstream(
    upstream: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo, module, _ = push(upstream, 42)
    with refused_port() as port:  # no other test can take the port meanwhile
        dead = f"http://127.0.0.1:{port}"
        mirror_hosts(tmp_path, upstream, dead)
        started = time.monotonic()
        got = await fetch_oci(FetchRequest(upstream.oci_url(repo, "v1")), settings_for(tmp_path))
    assert got.data == module
    assert time.monotonic() - started < 5.0  # a refused mirror costs one attempt, no backoff
    assert upstream.count_requests("GET", rf"^/v2/{repo}/manifests/v1") == 1
    failed = [r for r in caplog.records if r.getMessage().startswith("registry host failed")]
    assert failed and getattr(failed[0], "host", "").startswith(dead)


@pytest.mark.registry
async def test_pull_only_mirror_never_resolves_tags(
    upstream: Registry, mirror: Registry, tmp_path: Path
) -> None:
    repo, module, _ = push(upstream, 43)
    mirror_hosts(tmp_path, upstream, mirror.url, caps='["pull"]')
    got = await fetch_oci(FetchRequest(upstream.oci_url(repo, "v1")), settings_for(tmp_path))
    assert got.data == module
    assert mirror.count_requests("GET", rf"^/v2/{repo}/manifests/") == 0
    assert mirror.count_blob_gets(repo) == 1


@pytest.mark.registry
async def test_tampered_mirror_is_caught_and_the_upstream_used(
    upstream: Registry, mirror: Registry, tmp_path: Path
) -> None:
    repo, module, digest = push(upstream, 44)
    mirror_hosts(tmp_path, upstream, mirror.url)
    settings = settings_for(tmp_path)
    url = upstream.oci_url(repo, "v1")
    await fetch_oci(FetchRequest(url), settings)  # the mirror now caches the blob
    layer = "sha256:" + sha256_hex(module)
    # stored with a GET of its own after streaming it to us: count once that is done
    await asyncio.to_thread(mirror.wait_for_blob, repo, layer)
    upstream_blob_gets = upstream.count_blob_gets(repo)
    evil = bytearray(module)
    evil[-1] ^= 0xFF
    mirror.tamper_blob(layer, bytes(evil))
    got = await fetch_oci(FetchRequest(url, sha256=digest), settings)
    assert got.data == module
    assert upstream.count_blob_gets(repo) == upstream_blob_gets + 1  # ours, after the mirror's


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate(tmp_path_factory.mktemp("pki"), server_name="registry.test")


@pytest.fixture(scope="module")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[TlsRegistry]:
    with TlsRegistry(tmp_path_factory.mktemp("tls-registry"), tls_files) as reg:
        yield reg


@pytest.fixture(scope="module")
def mtls_registry(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[TlsRegistry]:
    with TlsRegistry(tmp_path_factory.mktemp("mtls-registry"), tls_files, client_ca=True) as reg:
        yield reg


@pytest.mark.registry
async def test_registry_ca_from_hosts_toml(
    tls_registry: TlsRegistry, tls_files: TlsFiles, tmp_path: Path
) -> None:
    repo, module, _ = push(tls_registry, 45)
    url = tls_registry.oci_url(repo, "v1")
    with pytest.raises(DownloadFailure, match="certificate verif") as info:
        await fetch_oci(FetchRequest(url), settings_for(tmp_path))
    assert tls_registry.host in str(info.value)
    write_hosts(tmp_path, tls_registry.host, f'ca = "{tls_files.ca}"\n')
    got = await fetch_oci(FetchRequest(url), settings_for(tmp_path))
    assert got.data == module


@pytest.mark.registry
async def test_client_certificate_from_hosts_toml(
    mtls_registry: TlsRegistry, tls_files: TlsFiles, tmp_path: Path
) -> None:
    context = ssl.create_default_context(cafile=str(tls_files.ca))
    context.load_cert_chain(str(tls_files.client_cert), str(tls_files.client_key))
    repo, module, _ = push(mtls_registry, 46, verify=context)
    url = mtls_registry.oci_url(repo, "v1")
    write_hosts(tmp_path, mtls_registry.host, f'ca = "{tls_files.ca}"\n')
    with pytest.raises(DownloadFailure) as info:
        await fetch_oci(FetchRequest(url), settings_for(tmp_path))
    assert mtls_registry.host in str(info.value)
    client = f'client = [["{tls_files.client_cert}", "{tls_files.client_key}"]]\n'
    write_hosts(tmp_path, mtls_registry.host, f'ca = "{tls_files.ca}"\n{client}')
    got = await fetch_oci(FetchRequest(url), settings_for(tmp_path))
    assert got.data == module
    # the node service fetching for a pod never presents the node's client certificate
    for_pods = dataclasses.replace(settings_for(tmp_path), registry_client_certs=False)
    with pytest.raises(DownloadFailure, match="not presented for pods' requests"):
        await fetch_oci(FetchRequest(url), for_pods)


@pytest.mark.registry
async def test_insecure_registries_still_work_beside_hosts_toml(
    upstream: Registry, tmp_path: Path
) -> None:
    repo, module, _ = push(upstream, 47)
    write_hosts(tmp_path, "unrelated.example", 'server = "https://unrelated.example"\n')
    settings = settings_for(tmp_path, upstream.host)
    got = await fetch_oci(FetchRequest(upstream.oci_url(repo, "v1")), settings)
    assert got.data == module


@pytest.mark.registry
async def test_bad_hosts_toml_fails_the_fetch_naming_the_registry(
    upstream: Registry, tmp_path: Path
) -> None:
    write_hosts(tmp_path, upstream.host, "server = [")
    with pytest.raises(DownloadFailure) as info:
        await fetch_oci(FetchRequest(upstream.oci_url("x/y", "v1")), settings_for(tmp_path))
    assert upstream.host in str(info.value) and "not valid TOML" in str(info.value)


def test_settings_from_the_environment_and_flags(tmp_path: Path) -> None:
    env = {
        "WASM_AGENT_REGISTRY_CONFIG_DIR": str(tmp_path),
        "WASM_AGENT_CREDENTIAL_HELPER_TTL": "2m",
        "WASM_AGENT_CREDENTIAL_HELPER_TIMEOUT": "3s",
    }
    settings = build_fetch_settings(env)
    assert settings.registry_config_dir == tmp_path
    assert (settings.credential_helper_ttl, settings.credential_helper_timeout) == (120.0, 3.0)
    defaults = build_fetch_settings({})
    assert defaults.registry_config_dir is None
    assert (defaults.credential_helper_ttl, defaults.credential_helper_timeout) == (900.0, 10.0)
    with pytest.raises(ConfigError, match="WASM_AGENT_CREDENTIAL_HELPER_TIMEOUT"):
        build_fetch_settings({"WASM_AGENT_CREDENTIAL_HELPER_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="WASM_AGENT_CREDENTIAL_HELPER_TTL"):
        build_fetch_settings({"WASM_AGENT_CREDENTIAL_HELPER_TTL": "soon"})


def test_flags_win_over_the_variables(tmp_path: Path) -> None:
    from_env = tmp_path / "from-env"  # the directory must exist (a missing one is exit 2)
    from_env.mkdir()
    env = {
        "WASM_AGENT_CREDENTIAL_HELPER_TTL": "2m",
        "WASM_AGENT_REGISTRY_CONFIG_DIR": str(from_env),
    }
    parser = argparse.ArgumentParser()
    config.add_flags(parser, config.REGISTRY, env)
    args = parser.parse_args(["--registry-config-dir", str(tmp_path)])
    settings = fetch_settings_from_env(env, flags=args)
    assert settings.registry_config_dir == tmp_path and settings.credential_helper_ttl == 120.0
    args = parser.parse_args(["--credential-helper-ttl", "0", "--credential-helper-timeout", "1s"])
    settings = fetch_settings_from_env(env, flags=args)
    assert settings.registry_config_dir == from_env
    assert (settings.credential_helper_ttl, settings.credential_helper_timeout) == (0.0, 1.0)


def test_check_help_names_the_flags_and_variables() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wasm_agent", "check", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag, env in (
        ("--registry-config-dir", "WASM_AGENT_REGISTRY_CONFIG_DIR"),
        ("--credential-helper-ttl", "WASM_AGENT_CREDENTIAL_HELPER_TTL"),
        ("--credential-helper-timeout", "WASM_AGENT_CREDENTIAL_HELPER_TIMEOUT"),
    ):
        assert flag in out and env in " ".join(out.split())


@hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=300))
def test_any_hosts_file_text_is_read_or_refused_clearly(tmp_path: Path, text: str) -> None:
    path = write_hosts(tmp_path, "reg.example", text)
    try:
        hosts = load_hosts(tmp_path, "reg.example")
    except HostsConfigError as error:
        assert str(path) in str(error)
    else:
        assert hosts.endpoints[-1].mirror is False


async def test_an_unloadable_certificate_or_ca_is_a_fetch_error_naming_it(tmp_path: Path) -> None:
    """Review 5, F3: a CA or client certificate file that cannot be loaded was raised when the
    connection was built, outside the fetch's error handling: a traceback in prefetch and
    check, "failed unexpectedly" from the node. Now a fetch error naming the file."""
    with refused_port() as port:
        host = f"127.0.0.1:{port}"
        for line, named in (
            ('client = [["/nonexistent.pem", "/nonexistent.key"]]', "/nonexistent.pem"),
            ('ca = "/nonexistent-ca.pem"', "/nonexistent-ca.pem"),
        ):
            write_hosts(tmp_path, host, line + "\n")
            with pytest.raises(DownloadFailure) as info:
                await fetch_oci(FetchRequest(f"oci://{host}/wasm/x:v1"), settings_for(tmp_path))
            message = str(info.value)
            assert f"registry host configuration for {host}" in message, message
            assert f"{named} cannot be loaded" in message, message
