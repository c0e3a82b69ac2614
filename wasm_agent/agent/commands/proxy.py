"""Run the sidecar xDS proxy between Envoy and istiod, fetching Wasm modules for ECDS.

Every flag can also be set by an environment variable (``WASM_AGENT_<FLAG>``, listed in
``docs/proxy.md``); a flag on the command line wins. Istio's ``WASM_*`` variables configure
fetching and the cache; ``XDS_HEADER_<name>`` variables add upstream gRPC metadata.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_DISCOVERY = "istiod.istio-system.svc:15012"
DEFAULT_LISTEN = "unix:./etc/istio/proxy/XDS"
DEFAULT_STATUS = "127.0.0.1:15020"
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
SHUTDOWN_GRACE = 3.0

# flag destination -> environment variable
ENV = {
    "discovery_address": "WASM_AGENT_DISCOVERY_ADDRESS",
    "listen": "WASM_AGENT_LISTEN",
    "cache_dir": "WASM_AGENT_CACHE_DIR",
    "plaintext": "WASM_AGENT_PLAINTEXT",
    "tls_ca": "WASM_AGENT_TLS_CA",
    "tls_cert": "WASM_AGENT_TLS_CERT",
    "tls_key": "WASM_AGENT_TLS_KEY",
    "token_file": "WASM_AGENT_TOKEN_FILE",
    "tls_server_name": "WASM_AGENT_TLS_SERVER_NAME",
    "status_address": "WASM_AGENT_STATUS_ADDRESS",
    "fetch_failure": "WASM_AGENT_FETCH_FAILURE",
    "max_message_size": "WASM_AGENT_MAX_MESSAGE_SIZE",
    "max_streams": "WASM_AGENT_MAX_STREAMS",
    "verify_policy": "WASM_AGENT_VERIFY_POLICY",
}
_SIZE_UNITS = {
    "": 1,
    "k": 1000,
    "ki": 1024,
    "m": 1000**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gi": 1024**3,
}


def _env(dest: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV[dest], "").strip()
    return value or default


def _truthy(text: str | None) -> bool:
    return (text or "").lower() in ("1", "true", "yes", "on")


def parse_size(text: str) -> int:
    """``67108864``, ``64Mi``, ``100M`` -> bytes."""
    raw = text.strip().lower().removesuffix("b")
    number = raw.rstrip("kmgi")
    unit = raw[len(number) :]
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 67108864, 64Mi)")
    return int(number) * _SIZE_UNITS[unit]


def _help(text: str, dest: str) -> str:
    return f"{text} [env {ENV[dest]}]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags (defaults from the environment)."""
    parser.add_argument(
        "--discovery-address",
        metavar="HOST:PORT",
        default=_env("discovery_address", DEFAULT_DISCOVERY),
        help=_help(f"istiod's xDS address (default {DEFAULT_DISCOVERY})", "discovery_address"),
    )
    parser.add_argument(
        "--listen",
        metavar="unix:PATH|HOST:PORT",
        default=_env("listen", DEFAULT_LISTEN),
        help=_help(f"where Envoy connects (default {DEFAULT_LISTEN})", "listen"),
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=_env("cache_dir"),
        help=_help("module cache directory (default ~/.cache/wasm-agent)", "cache_dir"),
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=_truthy(_env("plaintext")),
        help=_help("talk to istiod without TLS (only with this flag)", "plaintext"),
    )
    parser.add_argument(
        "--tls-ca", metavar="FILE", default=_env("tls_ca"), help=_help("CA bundle", "tls_ca")
    )
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=_env("tls_cert"),
        help=_help("client certificate for mTLS (re-read when it changes)", "tls_cert"),
    )
    parser.add_argument(
        "--tls-key",
        metavar="FILE",
        default=_env("tls_key"),
        help=_help("client private key for mTLS", "tls_key"),
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=_env("token_file"),
        help=_help("bearer token file, read for every new stream", "token_file"),
    )
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=_env("tls_server_name"),
        help=_help("server name to verify (SNI/authority override)", "tls_server_name"),
    )
    parser.add_argument(
        "--status-address",
        metavar="HOST:PORT",
        default=_env("status_address", DEFAULT_STATUS),
        help=_help(f"/healthz/ready and /metrics (default {DEFAULT_STATUS})", "status_address"),
    )
    parser.add_argument(
        "--fetch-failure",
        choices=["nack", "deny"],
        default=_env("fetch_failure", "nack"),
        help=_help(
            "fail-closed plugin whose module fails: NACK upstream or deny-all", "fetch_failure"
        ),
    )
    parser.add_argument(
        "--max-message-size",
        metavar="BYTES",
        type=parse_size,
        default=_env("max_message_size", str(DEFAULT_MAX_MESSAGE)),
        help=_help("gRPC message size limit on both hops (default 64Mi)", "max_message_size"),
    )
    parser.add_argument(
        "--max-streams",
        metavar="N",
        type=int,
        default=int(_env("max_streams", "100") or 100),
        help=_help("concurrent Envoy ADS streams accepted (default 100)", "max_streams"),
    )
    parser.add_argument(
        "--verify-policy",
        metavar="FILE",
        default=_env("verify_policy"),
        help=_help("require cosign signatures per this policy (docs/signing.md)", "verify_policy"),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain, 1 if start-up fails, 2 on usage."""
    import asyncio

    from wasm_agent.core.settings import SettingsError
    from wasm_agent.xds.upstream import UpstreamError, UpstreamSettings, xds_headers_from_env

    if args.fetch_failure not in ("nack", "deny"):
        print(f"wasm-agent proxy: --fetch-failure: {args.fetch_failure!r}", file=sys.stderr)
        return 2
    try:
        upstream = UpstreamSettings(
            address=args.discovery_address,
            plaintext=args.plaintext,
            ca_file=_path(args.tls_ca),
            cert_file=_path(args.tls_cert),
            key_file=_path(args.tls_key),
            token_file=_path(args.token_file),
            server_name=args.tls_server_name,
            headers=xds_headers_from_env(),
            max_message_size=args.max_message_size,
        )
    except UpstreamError as error:
        print(f"wasm-agent proxy: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, upstream))
    except (SettingsError, ValueError) as error:
        print(f"wasm-agent proxy: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"wasm-agent proxy: {error}", file=sys.stderr)
        return 1


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


async def _serve(args: argparse.Namespace, upstream_settings) -> int:
    import asyncio
    import logging

    from wasm_agent.agent.fetch_settings import fetch_settings_from_env
    from wasm_agent.agent.lifecycle import drain, wait_for_signal
    from wasm_agent.agent.status import StatusServer
    from wasm_agent.cache import ModuleCache
    from wasm_agent.core.settings import cache_settings_from_env
    from wasm_agent.fetch import dispatch  # noqa: F401 - declares the fetch metrics up front
    from wasm_agent.xds.converter import WasmConverter
    from wasm_agent.xds.proxy import ListenSettings, XdsProxy
    from wasm_agent.xds.upstream import Upstream

    log = logging.getLogger("wasm_agent.proxy")
    fetch_settings = fetch_settings_from_env(verify_policy=getattr(args, "verify_policy", None))
    cache = ModuleCache(cache_settings_from_env(args.cache_dir), fetch_settings)
    proxy = XdsProxy(
        ListenSettings(
            address=args.listen,
            max_message_size=args.max_message_size,
            max_streams=args.max_streams,
        ),
        Upstream(upstream_settings),
        WasmConverter(cache, args.fetch_failure),
    )
    status = StatusServer(args.status_address, lambda: proxy.ready)
    await status.start()
    try:
        await proxy.start()
    except Exception:
        await status.stop()
        raise
    purge = asyncio.create_task(cache.purge_periodically())
    log.info(
        "wasm-agent proxy running",
        extra={
            "discovery": upstream_settings.address,
            "listen": args.listen,
            "status": f"{status.host}:{status.port}",
            "fetch_failure": args.fetch_failure,
            "verify_policy": getattr(args, "verify_policy", None) or "",
        },
    )
    number = await wait_for_signal()
    log.info("signal received, draining", extra={"signal": number})
    purge.cancel()

    async def stop_proxy() -> None:
        await proxy.stop(grace=SHUTDOWN_GRACE)

    await drain([stop_proxy, status.stop])
    cache.close()
    return 0
