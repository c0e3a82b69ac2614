"""``wasm-agent node``: the trusted node service (a CSI node plugin, driver csi.wasm-agent.io).

Serves the CSI Identity and Node services on ``--csi-endpoint unix:PATH`` for kubelet, turns
each CSI ephemeral inline volume into the pod's view (read-only ``modules/`` and ``node.sock``)
and places modules there from the node cache ``--cache-dir``, which only this process writes.
Exit status: 0 stopped by a signal, 1 failed to start, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

from wasm_agent.core import config
from wasm_agent.core.errors import UsageError
from wasm_agent.core.logs import setup_logging
from wasm_agent.core.paths import existing_directory, flag_name
from wasm_agent.core.settings import cache_settings_from_env, parse_duration
from wasm_agent.core.unix_socket import SocketInUse, claim_socket_path
from wasm_agent.fetch.trust_policy import fetch_settings_from_env
from wasm_agent.node.run import serve
from wasm_agent.node.settings import (
    DEFAULT_PODS_DIR,
    NodeSettings,
    NodeSettingsError,
    parse_csi_endpoint,
)

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``node`` flags."""
    env = os.environ
    parser.add_argument(
        "--csi-endpoint",
        default=env.get("CSI_ENDPOINT", ""),
        metavar="unix:PATH",
        help="CSI gRPC socket kubelet calls (default $CSI_ENDPOINT)",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="node cache (default $WASM_AGENT_CACHE_DIR)"
    )
    # --cache-max-bytes, --fetch-backoff and the registry flags, the same rows as proxy's
    config.add_flags(parser, (config.CACHE_MAX_BYTES, config.FETCH_BACKOFF, *config.REGISTRY), env)
    parser.add_argument(
        "--status-address", metavar="HOST:PORT", help="serve /healthz/ready and /metrics"
    )
    parser.add_argument(
        "--node-id",
        default=env.get("NODE_NAME") or socket.gethostname(),
        help="NodeGetInfo node_id (default $NODE_NAME, else the host name)",
    )
    parser.add_argument(
        "--kubelet-pods-dir",
        type=Path,
        default=DEFAULT_PODS_DIR,
        metavar="DIR",
        help=f"every target_path must lie under it (default {DEFAULT_PODS_DIR})",
    )
    parser.add_argument(
        "--access-ttl",
        default="5m",
        metavar="DURATION",
        help="how long a registry's acceptance of a pod's credentials is reused (default 5m)",
    )
    parser.add_argument(
        "--max-fetches",
        default="16",
        metavar="N",
        help="downloads (with their compile checks) all pods together may have in progress; "
        "one pod may have 2 (default 16, at least 2)",
    )
    parser.add_argument(
        "--no-mounts",
        action="store_true",
        help="place modules by hardlink or copy instead of read-only bind mounts",
    )
    parser.add_argument(
        "--verify-policy",
        metavar="FILE",
        help="cosign signatures required per repository (default $WASM_AGENT_VERIFY_POLICY)",
    )


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    """:class:`NodeSettings` from parsed flags and the environment (usage errors raise)."""
    if not args.csi_endpoint:
        raise NodeSettingsError("--csi-endpoint is required (unix:PATH)")
    return NodeSettings(
        csi_socket=parse_csi_endpoint(args.csi_endpoint),
        cache=replace(  # the flags win over the variables
            cache_settings_from_env(args.cache_dir),
            max_bytes=args.cache_max_bytes,
            fetch_backoff=args.fetch_backoff,
        ),
        fetch=replace(  # the flags win over the variables, as for proxy
            fetch_settings_from_env(verify_policy=args.verify_policy),
            registry_config_dir=Path(hosts) if (hosts := args.registry_config_dir) else None,
            credential_helper_ttl=args.credential_helper_ttl,
            credential_helper_timeout=args.credential_helper_timeout,
        ),
        status_address=args.status_address,
        node_id=args.node_id,
        pods_dir=Path(os.path.normpath(args.kubelet_pods_dir)),
        access_ttl=parse_duration(args.access_ttl, "--access-ttl"),
        use_mounts=not args.no_mounts,
        max_fetches=_max_fetches(args.max_fetches),
    )


def _max_fetches(raw: str) -> int:
    """``--max-fetches N``: an integer of at least 2 (one pod's own share)."""
    try:
        return config.integer(2)(raw)
    except config.Invalid:
        raise NodeSettingsError(
            f"--max-fetches: expected an integer of at least 2, got {raw!r}"
        ) from None


def check_paths(settings: NodeSettings, args: argparse.Namespace) -> None:
    """Start-up checks of the paths the flags name (before anything listens or is written).

    ``--kubelet-pods-dir``, ``--registry-config-dir`` and the CSI endpoint's directory must be
    existing directories (:class:`UsageError`, exit 2; the endpoint's directory is not created:
    in a DaemonSet it is the mounted plugin directory). At the endpoint path itself only a stale
    socket is removed (:func:`~wasm_agent.core.unix_socket.claim_socket_path`).
    """
    existing_directory("--kubelet-pods-dir", settings.pods_dir)
    if settings.fetch.registry_config_dir is not None:
        variable = "WASM_AGENT_REGISTRY_CONFIG_DIR"
        hosts = settings.fetch.registry_config_dir
        name = flag_name("--registry-config-dir", variable, hosts, os.environ.get(variable))
        existing_directory(name, hosts)
    flag = f"--csi-endpoint {args.csi_endpoint}"
    parent = settings.csi_socket.parent
    if not parent.is_dir():
        missing = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(f"{flag}: directory {parent} {missing} (create it, or choose another)")
    claim_socket_path(settings.csi_socket, flag)


def run(args: argparse.Namespace) -> int:
    """Run the node service until SIGTERM/SIGINT."""
    setup_logging(args.log_level)
    try:
        settings = settings_from_args(args)
        check_paths(settings, args)
    except (NodeSettingsError, UsageError) as error:
        print(f"wasm-agent node: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except SocketInUse as error:
        print(f"wasm-agent node: {error}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    try:
        asyncio.run(serve(settings))
    except UsageError as error:  # the endpoint changed since check_paths
        print(f"wasm-agent node: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except (OSError, SocketInUse) as error:  # bind failures name the flag (core/listen.py)
        log.error("node service failed", extra={"error": str(error)})
        return EXIT_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m wasm_agent.node``: the same as ``wasm-agent node``."""
    parser = argparse.ArgumentParser(prog="wasm-agent node", description=__doc__)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )  # the agent CLI adds this flag to every command itself
    add_arguments(parser)
    return run(parser.parse_args(argv))
