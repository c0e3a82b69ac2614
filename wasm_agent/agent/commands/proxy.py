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
from typing import TYPE_CHECKING

from wasm_agent.core import config

if TYPE_CHECKING:
    from collections.abc import Callable

    from wasm_agent.agent.upstream_probe import UpstreamProbe
    from wasm_agent.xds.upstream import UpstreamSettings

SHUTDOWN_GRACE = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags from the configuration table (defaults from the environment)."""
    from wasm_agent.node.settings import NODE_SOCKET

    config.add_flags(parser, (*config.PROXY, *config.REGISTRY, NODE_SOCKET), os.environ)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain, 1 if start-up fails, 2 on usage."""
    import asyncio

    from wasm_agent.xds import grpc_core

    grpc_core.configure()  # before anything imports grpc
    from wasm_agent.core.errors import UsageError
    from wasm_agent.xds.upstream import UpstreamError, UpstreamSettings

    try:
        upstream = UpstreamSettings(
            address=args.discovery_address,
            plaintext=args.plaintext,
            ca_file=_path(args.tls_ca),
            cert_file=_path(args.tls_cert),
            key_file=_path(args.tls_key),
            token_file=_path(args.token_file),
            server_name=args.tls_server_name,
            headers=config.xds_headers(os.environ),
            max_message_size=args.max_message_size,
        )
    except UpstreamError as error:  # never echo user-info of the address (a password)
        address = args.discovery_address
        message = str(error).replace(address, config.shown(address))
        if (detail := message.removeprefix("address: ")) != message:  # name what was set
            message = f"--discovery-address (WASM_AGENT_DISCOVERY_ADDRESS): {detail}"
        raise UsageError(message) from None
    from wasm_agent.agent.preflight import check_tls_files, prepare_listen
    from wasm_agent.core.unix_socket import SocketInUse

    check_tls_files(args.tls_ca, args.tls_cert, args.tls_key, args.token_file)  # exit 2 if bad
    try:
        prepare_listen(args.listen)  # exit 2: not a socket at the path; 1: a live socket
        return asyncio.run(_serve(args, upstream))
    except UsageError:
        raise
    except ValueError as error:  # settings the proxy parts refuse (they name the setting)
        raise UsageError(str(error)) from None
    except (OSError, SocketInUse) as error:  # bind failures name the flag (core/listen.py)
        print(f"wasm-agent proxy: {error}", file=sys.stderr)
        return 1


def _probe(settings: UpstreamSettings, connected: Callable[[], bool]) -> UpstreamProbe:
    """The probe that warns while istiod cannot be reached (``agent/upstream_probe.py``)."""
    from wasm_agent.agent.upstream_probe import ProbeTarget, UpstreamProbe

    target = ProbeTarget(
        address=settings.address, plaintext=settings.plaintext, ca_file=settings.ca_file,
        cert_file=settings.cert_file, key_file=settings.key_file,
        server_name=settings.server_name,
    )  # fmt: skip
    return UpstreamProbe(target, connected)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


async def _serve(args: argparse.Namespace, upstream_settings) -> int:
    import asyncio
    import logging
    from dataclasses import replace

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
    fetch_settings = fetch_settings_from_env(verify_policy=args.verify_policy, flags=args)
    if args.node_socket:  # modules from the node service, in the pod's CSI volume
        from wasm_agent.node.client import NodeModuleSource

        cache = NodeModuleSource(args.node_socket)
    else:
        settings = cache_settings_from_env(args.cache_dir)  # the flags win over the variables
        settings = replace(
            settings, max_bytes=args.cache_max_bytes, fetch_backoff=args.fetch_backoff
        )
        cache = ModuleCache(settings, fetch_settings)
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
    probe = asyncio.create_task(_probe(upstream_settings, lambda: proxy.ready).run())
    log.info(
        "wasm-agent proxy running",
        extra={
            "discovery": upstream_settings.address,
            "listen": args.listen,
            "status": f"{status.host}:{status.port}",
            "fetch_failure": args.fetch_failure,
            "verify_policy": args.verify_policy or "",
        },
    )
    number = await wait_for_signal()
    log.info("signal received, draining", extra={"signal": number})
    purge.cancel()
    probe.cancel()

    async def stop_proxy() -> None:
        await proxy.stop(grace=SHUTDOWN_GRACE)

    await drain([stop_proxy, status.stop])
    cache.close()
    return 0
