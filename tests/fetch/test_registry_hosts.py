"""containerd ``hosts.toml``: parsing, then mirrors, fallback, CAs and mTLS on real registries."""

from __future__ import annotations

from pathlib import Path

import pytest

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
