"""The configuration table: the pure environment -> values function, table-tested."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from wasm_agent.core import config
from wasm_agent.core.config import ConfigError
from wasm_agent.core.errors import SettingsError, UsageError
from wasm_agent.core.settings import (
    FetchSettings,
    build_fetch_settings,
    cache_settings_from_env,
    with_insecure_registries,
)

GOOD = [
    ("WASM_AGENT_MAX_STREAMS", "7", "max_streams", 7),
    ("WASM_AGENT_PLAINTEXT", "TRUE", "plaintext", True),
    ("WASM_AGENT_PLAINTEXT", "off", "plaintext", False),
    ("WASM_AGENT_FETCH_FAILURE", "deny", "fetch_failure", "deny"),
    ("WASM_AGENT_MAX_MESSAGE_SIZE", "64Mi", "max_message_size", 64 * 1024 * 1024),
    ("WASM_AGENT_MAX_MESSAGE_SIZE", "100M", "max_message_size", 100_000_000),
    ("WASM_AGENT_DISCOVERY_ADDRESS", "[::1]:15012", "discovery_address", "[::1]:15012"),
    ("WASM_AGENT_LISTEN", "unix:/run/xds.sock", "listen", "unix:/run/xds.sock"),
    ("WASM_AGENT_DISCOVERY_ADDRESS", "unix:/a/XDS", "discovery_address", "unix:/a/XDS"),
    ("WASM_AGENT_DISCOVERY_ADDRESS", "unix:///a/XDS", "discovery_address", "unix:///a/XDS"),
    ("WASM_AGENT_STATUS_ADDRESS", "127.0.0.1:0", "status_address", "127.0.0.1:0"),
    ("WASM_HTTP_REQUEST_TIMEOUT", "1m30s", "http_request_timeout", 90.0),
    ("WASM_HTTP_REQUEST_MAX_RETRIES", "0", "http_max_retries", 0),
    ("WASM_INSECURE_REGISTRIES", "a:5000, b", "insecure_registries", frozenset({"a:5000", "b"})),
    ("WASM_MODULE_EXPIRY", "500ms", "module_expiry", 0.5),
    ("BLOCKED_CIDRS_IN_WASM_FETCH", "10.0.0.0/8", "blocked_networks",
     (ipaddress.ip_network("10.0.0.0/8"),)),
]  # fmt: skip

BAD = [
    ("WASM_AGENT_MAX_STREAMS", "abc", "an integer >= 1"),
    ("WASM_AGENT_MAX_STREAMS", "0", "an integer >= 1"),
    ("WASM_AGENT_PLAINTEXT", "banana", "one of true, false, 1, 0, yes, no, on, off"),
    ("WASM_HTTP_REQUEST_MAX_RETRIES", "-1", "an integer >= 0"),
    ("WASM_AGENT_FETCH_FAILURE", "banana", "one of nack, deny"),
    ("WASM_AGENT_DISCOVERY_ADDRESS", "nocolon", "unix:PATH or HOST:PORT with a port from 1 to"),
    ("WASM_AGENT_DISCOVERY_ADDRESS", "istiod:0", "unix:PATH or HOST:PORT with a port from 1 to"),
    ("WASM_AGENT_DISCOVERY_ADDRESS", "istiod:70000", "unix:PATH or HOST:PORT with a port from 1"),
    ("WASM_AGENT_LISTEN", "unix:", "unix:PATH or HOST:PORT with a port from 0 to 65535"),
    ("WASM_AGENT_DISCOVERY_ADDRESS", "unix://rel/x", "unix:PATH or HOST:PORT with a port from 1"),
    ("WASM_AGENT_STATUS_ADDRESS", "unix:/x", "HOST:PORT with a port from 0 to 65535"),
    ("WASM_AGENT_MAX_MESSAGE_SIZE", "lots", "a positive size in bytes"),
    ("WASM_AGENT_MAX_MESSAGE_SIZE", "0", "a positive size in bytes"),
    ("WASM_HTTP_REQUEST_TIMEOUT", "soon", "a duration such as 15s"),
    ("WASM_HTTP_REQUEST_TIMEOUT", "0s", "a duration greater than zero"),
    ("ISTIO_WASM_MAX_BINARY_SIZE_BYTES", "0", "an integer >= 1"),
    ("BLOCKED_CIDRS_IN_WASM_FETCH", "10.0.0.0/8,nope", "comma-separated CIDRs"),
]


@pytest.mark.parametrize(("name", "raw", "field", "value"), GOOD)
def test_good_values(name: str, raw: str, field: str, value: object) -> None:
    assert config.read_env(config.ALL, {name: raw}) == {field: value}


@pytest.mark.parametrize(("name", "raw", "allowed"), BAD)
def test_bad_values_name_the_variable_the_value_and_what_is_allowed(
    name: str, raw: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.read_env(config.ALL, {name: raw})
    error = info.value
    assert (error.name, error.value) == (name, raw)
    assert str(error).startswith(f"{name}: invalid value {raw!r}: expected {allowed}")
    assert isinstance(error, SettingsError) and isinstance(error, UsageError)


def test_blank_means_unset_and_defaults_fill_the_rest() -> None:
    assert config.read_env(config.ALL, {"WASM_AGENT_MAX_STREAMS": "  "}) == {}
    values = config.values(config.PROXY, {})
    assert values["max_streams"] == 100 and values["status_address"] == "127.0.0.1:15020"
    assert values["fetch_failure"] == "nack" and values["plaintext"] is False


def test_every_variable_has_one_row() -> None:
    names = [o.env for o in config.ALL]
    assert len(names) == len(set(names))
    assert all(o.flag.startswith("--") for o in config.ALL if o.flag)


def test_flags_take_their_defaults_from_the_environment_and_name_it_in_the_help() -> None:
    parser = argparse.ArgumentParser()
    config.add_flags(parser, config.PROXY, {"WASM_AGENT_MAX_STREAMS": "9"})
    assert parser.parse_args([]).max_streams == 9
    assert parser.parse_args(["--max-streams", "3"]).max_streams == 3
    assert "[env WASM_AGENT_MAX_STREAMS]" in parser.format_help()
    with pytest.raises(ConfigError, match="WASM_AGENT_PLAINTEXT"):
        config.add_flags(argparse.ArgumentParser(), config.PROXY, {"WASM_AGENT_PLAINTEXT": "x"})


def test_a_bad_flag_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    config.add_flags(parser, config.PROXY, {})
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--discovery-address", "nocolon"])
    assert info.value.code == 2
    assert "--discovery-address: invalid value 'nocolon': expected unix:PATH or HOST:PORT" in (
        capsys.readouterr().err
    )


def test_xds_headers_from_the_prefix() -> None:
    env = {"XDS_HEADER_X-Team": "a", "XDS_HEADER_": "ignored", "OTHER": "b"}
    assert config.xds_headers(env) == {"x-team": "a"}


def test_settings_objects_are_built_from_the_table(tmp_path: Path) -> None:
    env = {
        "WASM_HTTP_REQUEST_MAX_RETRIES": "0",  # one attempt, as before
        "BLOCKED_CIDRS_IN_WASM_FETCH": "10.0.0.0/8",
        "DOCKER_CONFIG": str(tmp_path),
        "WASM_AGENT_CACHE_DIR": str(tmp_path / "c"),
        "WASM_PURGE_INTERVAL": "2m",
    }
    fetch = build_fetch_settings(env)
    assert fetch.http_max_retries == 1 and fetch.docker_config_dir == tmp_path
    assert fetch.is_blocked("10.1.2.3") and fetch.is_blocked("169.254.169.254")
    assert not FetchSettings().is_blocked("10.1.2.3")
    cache = cache_settings_from_env(None, env)
    assert (cache.directory, cache.purge_interval) == (tmp_path / "c", 120.0)
    assert cache_settings_from_env(tmp_path / "flag", env).directory == tmp_path / "flag"
    merged = with_insecure_registries(
        build_fetch_settings({"WASM_INSECURE_REGISTRIES": "a"}), ["b"]
    )
    assert merged.insecure_registries == frozenset({"a", "b"})
