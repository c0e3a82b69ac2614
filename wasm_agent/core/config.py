"""The configuration table: every flag and environment variable, parsed and checked in one place.

Each :class:`Option` row names the settings field, the environment variable (Istio's names for
Istio's settings), the parser, the default and the help; rows with a ``flag`` also become
``argparse`` flags (:func:`add_flags`), whose help ends with ``[env NAME]`` and whose default
is the variable's value. A flag wins over its variable.

Parsing is pure (:func:`read_env` takes the environment as a mapping) and strict: a value that
cannot be used raises :class:`ConfigError` naming the variable (or flag), the value and what is
allowed; the CLI turns it into exit status 2. Nothing here writes to ``os.environ``.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wasm_agent.core.errors import SettingsError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Parser = Callable[[str], Any]

DEFAULT_DISCOVERY = "istiod.istio-system.svc:15012"
DEFAULT_LISTEN = "unix:./etc/istio/proxy/XDS"
DEFAULT_STATUS = "127.0.0.1:15020"
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
XDS_HEADER_PREFIX = "XDS_HEADER_"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SIZE_UNITS = {"": 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": 1024**2, "g": 1000**3}
_SIZE_UNITS["gi"] = 1024**3
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Invalid(ValueError):
    """Raised by a parser; ``str(error)`` says what is allowed."""


def shown(raw: str) -> str:
    """``raw`` for an error message, without user-info before an ``@`` (``user:pw@host:port``
    or ``scheme://user:pw@host``) and without a query or fragment (``?token=...``): a mistyped
    address must not echo a password or a token."""
    if "@" in raw:
        scheme, sep, rest = raw.partition("://") if "://" in raw else ("", "", raw)
        _user_info, at, after = rest.rpartition("@")  # a password may hold '/', '?' or '#'
        raw = f"{scheme}{sep}<redacted>{at}{after}"
    for mark in ("?", "#"):
        if mark in raw:
            raw = raw.partition(mark)[0] + mark + "<redacted>"
    if ";" in raw:  # path or host parameters (;token=...)
        raw = re.sub(r";[^/?#]*", ";<redacted>", raw)
    return raw


class ConfigError(SettingsError):
    """A variable or flag has a value that cannot be used."""

    def __init__(self, name: str, value: str, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}: invalid value {shown(value)!r}: expected {allowed}")


# -- parsers: text -> value, or Invalid(what is allowed) ------------------------------------


def text(raw: str) -> str:
    """Any non-empty text."""
    if not raw.strip():
        raise Invalid("a non-empty value")
    return raw.strip()


def boolean(raw: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case)."""
    low = raw.strip().lower()
    if low in _TRUE or low in _FALSE:
        return low in _TRUE
    raise Invalid("one of true, false, 1, 0, yes, no, on, off")


def integer(minimum: int) -> Parser:
    """A parser of whole numbers of at least ``minimum``."""

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise Invalid(f"an integer >= {minimum}") from None
        if value < minimum:
            raise Invalid(f"an integer >= {minimum}")
        return value

    return parse


def size(raw: str) -> int:
    """A positive byte count: ``67108864``, ``64Mi``, ``100M``."""
    low = raw.strip().lower().removesuffix("b")
    number = low.rstrip("kmgi")
    unit = low[len(number) :]
    if not number.isdigit() or unit not in _SIZE_UNITS or int(number) == 0:
        raise Invalid("a positive size in bytes such as 67108864, 64Mi or 100M")
    return int(number) * _SIZE_UNITS[unit]


def size_at_least(minimum: int, shown: str) -> Parser:
    """A parser of sizes (as :func:`size`) of at least ``minimum`` bytes (``shown``: 1Mi)."""

    def parse(raw: str) -> int:
        value = size(raw)
        if value < minimum:
            raise Invalid(f"a size of at least {shown} ({minimum} bytes), such as 64Mi")
        return value

    return parse


def parse_duration(raw: str, name: str = "duration") -> float:
    """A Go-style duration ("1h", "1m30s", "500ms", bare seconds "15") in seconds."""
    try:
        return duration(raw)
    except Invalid as error:
        raise ConfigError(name, raw, str(error)) from None


def duration(raw: str) -> float:
    """A Go-style duration ("1h", "1m30s", "500ms") or bare seconds ("15")."""
    value = raw.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise Invalid("a duration such as 15s, 500ms or 1h")
    return total


def positive_duration(raw: str) -> float:
    """A duration greater than zero."""
    value = duration(raw)
    if value <= 0:
        raise Invalid("a duration greater than zero, such as 15s, 500ms or 1h")
    return value


def choice(*allowed: str) -> Parser:
    """A parser accepting exactly one of ``allowed``."""

    def parse(raw: str) -> str:
        if raw.strip() not in allowed:
            raise Invalid("one of " + ", ".join(allowed))
        return raw.strip()

    return parse


def host_port(lowest_port: int) -> Parser:
    """A parser of ``HOST:PORT`` (``[v6]:PORT`` too) with a port from ``lowest_port``."""
    allowed = f"HOST:PORT with a port from {lowest_port} to 65535"

    def parse(raw: str) -> str:
        host, colon, port = raw.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise Invalid(allowed)
        if not lowest_port <= int(port) <= 65535 or host in ("[", "[]"):
            raise Invalid(allowed)
        return raw.strip()

    return parse


def socket_address(lowest_port: int) -> Parser:
    """A parser of ``unix:PATH`` or ``HOST:PORT`` (a port from ``lowest_port``)."""
    allowed = f"unix:PATH or HOST:PORT with a port from {lowest_port} to 65535"

    def parse(raw: str) -> str:
        text = raw.strip()
        if text.startswith("unix:") and text[5:]:
            path = text[5:]
            if path.startswith("//") and not path.startswith("///"):
                # gRPC reads unix://HOST/PATH as an authority: only unix:///ABS is a path
                given = shown("unix://" + path[2:])
                raise Invalid(f"{allowed} (unix:PATH, or unix:///ABSOLUTE-PATH; not {given})")
            return text
        try:
            return host_port(lowest_port)(raw)
        except Invalid:
            raise Invalid(allowed) from None

    return parse


def host_list(raw: str) -> frozenset[str]:
    """Comma-separated host names (``host`` or ``host:port``; ``*`` for all)."""
    return frozenset(h.strip() for h in raw.split(",") if h.strip())


def cidr_list(raw: str) -> tuple[IPNetwork, ...]:
    """Comma-separated networks (CIDR notation)."""
    networks = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise Invalid(f"comma-separated CIDRs such as 10.0.0.0/8 (bad: {item!r})") from None
    return tuple(networks)


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One row: settings ``field``, environment variable, parser, default, help, flag."""

    field: str
    env: str
    parse: Parser
    default: Any
    help: str
    flag: str = ""  # "" for a variable without a flag
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """The ``argparse`` attribute of the flag (``--cache-dir`` -> ``cache_dir``)."""
        return self.flag.lstrip("-").replace("-", "_")


CACHE_DIR = Option(
    "directory", "WASM_AGENT_CACHE_DIR", text, None,
    "module cache directory (default ~/.cache/wasm-agent)", "--cache-dir", "DIR",
)  # fmt: skip
VERIFY_POLICY = Option(
    "verify_policy", "WASM_AGENT_VERIFY_POLICY", text, None,
    "require cosign signatures per this policy (docs/signing.md)", "--verify-policy", "FILE",
)  # fmt: skip

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG: tuple[Option, ...] = (  # every command has these
    Option("log_level", "WASM_AGENT_LOG_LEVEL", choice(*LOG_LEVELS), None,
           "log verbosity (default info; warning when stderr is a terminal, except for proxy "
           "and demo)", "--log-level", "|".join(LOG_LEVELS)),
    Option("log_format", "WASM_AGENT_LOG_FORMAT", choice("text", "json"), "text",
           "log lines as key=value text or one JSON object per line (default text)",
           "--log-format", "text|json"),
)  # fmt: skip
ENVOY = Option(
    "envoy", "WASM_AGENT_ENVOY", text, None,
    "the envoy binary to run (default next to this Python, then on PATH)", "--envoy", "PATH",
)  # fmt: skip

REGISTRY: tuple[Option, ...] = (  # docs/registries.md
    Option("registry_config_dir", "WASM_AGENT_REGISTRY_CONFIG_DIR", text, None,
           "registry hosts directory, <DIR>/<host>/hosts.toml as containerd's certs.d: "
           "mirrors, CAs, client certificates", "--registry-config-dir", "DIR"),
    Option("credential_helper_ttl", "WASM_AGENT_CREDENTIAL_HELPER_TTL", duration, 900.0,
           "reuse a Docker credential helper's answer this long per registry (default 15m, "
           "0 never)", "--credential-helper-ttl", "DURATION"),
    Option("credential_helper_timeout", "WASM_AGENT_CREDENTIAL_HELPER_TIMEOUT",
           positive_duration, 10.0, "kill a Docker credential helper running longer "
           "(default 10s)", "--credential-helper-timeout", "DURATION"),
)  # fmt: skip

FETCH: tuple[Option, ...] = (
    Option("insecure_registries", "WASM_INSECURE_REGISTRIES", host_list, frozenset(),
           "registries reached over plain HTTP or unverified TLS (comma-separated, * for all)"),
    Option("http_request_timeout", "WASM_HTTP_REQUEST_TIMEOUT", positive_duration, 15.0,
           "timeout of one download request"),
    Option("http_max_retries", "WASM_HTTP_REQUEST_MAX_RETRIES", integer(0), 5,
           "download attempts (0 and 1 both mean one attempt)"),
    Option("max_binary_size", "ISTIO_WASM_MAX_BINARY_SIZE_BYTES", integer(1), 256 * 1024 * 1024,
           "largest module accepted, in bytes"),
    Option("blocked_networks", "BLOCKED_CIDRS_IN_WASM_FETCH", cidr_list, (),
           "networks no fetch may reach, besides link-local and cloud metadata"),
    Option("docker_config_dir", "DOCKER_CONFIG", text, None,
           "directory of the Docker config.json with registry credentials"),
    *REGISTRY,
    VERIFY_POLICY,
)  # fmt: skip

CACHE_MAX_BYTES = Option(
    "max_bytes", "WASM_AGENT_CACHE_MAX_BYTES", size, None,
    "cap on the cache's modules and compiled artifacts: least recently used ones no Envoy uses "
    "are evicted (default no cap; docs/cache.md)", "--cache-max-bytes", "BYTES",
)  # fmt: skip
FETCH_BACKOFF = Option(
    "fetch_backoff", "WASM_AGENT_FETCH_BACKOFF", duration, 10.0,
    "a module that failed to fetch is refused with the same error, without fetching, this long "
    "(default 10s like Envoy; 0 off; docs/registries.md)", "--fetch-backoff", "DURATION",
)  # fmt: skip

CACHE: tuple[Option, ...] = (
    CACHE_DIR,
    CACHE_MAX_BYTES,
    FETCH_BACKOFF,
    Option("module_expiry", "WASM_MODULE_EXPIRY", positive_duration, 24 * 3600.0,
           "unused modules older than this are purged"),
    Option("purge_interval", "WASM_PURGE_INTERVAL", positive_duration, 3600.0,
           "how often the proxy purges expired modules"),
)  # fmt: skip

HOST: tuple[Option, ...] = (
    Option("host_cache", "WASM_AGENT_HOST_CACHE", text, None,
           "compiled-module cache of the reference host (default ~/.cache/wasm-agent/host)"),
)  # fmt: skip

PROXY: tuple[Option, ...] = (
    Option("discovery_address", "WASM_AGENT_DISCOVERY_ADDRESS", socket_address(1),
           DEFAULT_DISCOVERY, f"istiod's xDS address (default {DEFAULT_DISCOVERY})",
           "--discovery-address", "HOST:PORT|unix:PATH"),
    Option("listen", "WASM_AGENT_LISTEN", socket_address(0), DEFAULT_LISTEN,
           f"where Envoy connects (default {DEFAULT_LISTEN})", "--listen", "unix:PATH|HOST:PORT"),
    CACHE_DIR,
    Option("plaintext", "WASM_AGENT_PLAINTEXT", boolean, False,
           "talk to istiod without TLS (only with this flag)", "--plaintext"),
    Option("tls_ca", "WASM_AGENT_TLS_CA", text, None, "CA bundle", "--tls-ca", "FILE"),
    Option("tls_cert", "WASM_AGENT_TLS_CERT", text, None,
           "client certificate for mTLS (re-read when it changes)", "--tls-cert", "FILE"),
    Option("tls_key", "WASM_AGENT_TLS_KEY", text, None, "client private key for mTLS",
           "--tls-key", "FILE"),
    Option("token_file", "WASM_AGENT_TOKEN_FILE", text, None,
           "bearer token file, read for every new stream", "--token-file", "FILE"),
    Option("tls_server_name", "WASM_AGENT_TLS_SERVER_NAME", text, None,
           "server name to verify (SNI/authority override)", "--tls-server-name", "NAME"),
    Option("status_address", "WASM_AGENT_STATUS_ADDRESS", host_port(0), DEFAULT_STATUS,
           f"/healthz/ready and /metrics (default {DEFAULT_STATUS})", "--status-address",
           "HOST:PORT"),
    Option("fetch_failure", "WASM_AGENT_FETCH_FAILURE", choice("nack", "deny"), "nack",
           "fail-closed plugin whose module fails: NACK upstream or deny-all (default nack)",
           "--fetch-failure", "nack|deny"),
    Option("max_message_size", "WASM_AGENT_MAX_MESSAGE_SIZE", size_at_least(1 << 20, "1Mi"),
           DEFAULT_MAX_MESSAGE, "gRPC message size limit on both hops (default 64Mi, at least "
           "1Mi)", "--max-message-size", "BYTES"),
    Option("max_streams", "WASM_AGENT_MAX_STREAMS", integer(1), 100,
           "concurrent Envoy ADS streams accepted (default 100)", "--max-streams", "N"),
    VERIFY_POLICY,
    CACHE_MAX_BYTES,
    FETCH_BACKOFF,
)  # fmt: skip

ALL: tuple[Option, ...] = tuple(
    {o.env: o for o in (*FETCH, *CACHE, *HOST, *PROXY, *LOG, ENVOY)}.values()
)


# -- reading -----------------------------------------------------------------------------------


def read_env(options: Iterable[Option], env: Mapping[str, str]) -> dict[str, Any]:
    """``field -> value`` for each option whose variable is set (blank counts as unset).

    Pure; raises :class:`ConfigError` naming the variable for a value that cannot be used.
    """
    found: dict[str, Any] = {}
    for option in options:
        raw = env.get(option.env, "")
        if not raw.strip():
            continue
        try:
            found[option.field] = option.parse(raw)
        except Invalid as error:
            raise ConfigError(option.env, raw, str(error)) from None
    return found


def values(options: Iterable[Option], env: Mapping[str, str]) -> dict[str, Any]:
    """``field -> value`` for every option: the variable's value, else the default."""
    rows = tuple(options)
    return {**{o.field: o.default for o in rows}, **read_env(rows, env)}


def xds_headers(env: Mapping[str, str]) -> dict[str, str]:
    """Upstream gRPC metadata from ``XDS_HEADER_<name>=<value>`` (names lowercased)."""
    return {
        key[len(XDS_HEADER_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(XDS_HEADER_PREFIX) and len(key) > len(XDS_HEADER_PREFIX)
    }


# -- flags -------------------------------------------------------------------------------------


def _flag_type(option: Option) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return option.parse(raw)
        except Invalid as error:
            raise argparse.ArgumentTypeError(
                f"invalid value {shown(raw)!r}: expected {error}"
            ) from None

    convert.__name__ = option.field  # argparse names the type in some messages
    return convert


def add_flags(
    parser: argparse.ArgumentParser,
    options: Iterable[Option],
    env: Mapping[str, str],
    *,
    again: bool = False,
) -> None:
    """Add a flag for each option that has one; its default is the variable's value.

    ``again``: the flags are also on a parent parser (``cache --log-level X ls``): here they
    have no default, so leaving them out keeps the parent's value.
    Raises :class:`ConfigError` (before any parsing) when a variable's value cannot be used.
    """
    rows = [o for o in options if o.flag]
    current = values(rows, env)
    if again:
        current = dict.fromkeys(current, argparse.SUPPRESS)
    for option in rows:
        help_text = f"{option.help} [env {option.env}]"
        if option.parse is boolean:
            parser.add_argument(
                option.flag, dest=option.dest, action="store_true",
                default=current[option.field], help=help_text,
            )  # fmt: skip
            continue
        parser.add_argument(
            option.flag, dest=option.dest, metavar=option.metavar, type=_flag_type(option),
            default=current[option.field], help=help_text,
        )  # fmt: skip
