"""Run a self-contained demo on 127.0.0.1: control plane, module server, wasm-agent, Envoy.

It loads a sample Wasm plugin into Envoy through wasm-agent, sends a request through Envoy,
then pushes the module with a wrong sha256 and shows the NACK while Envoy keeps serving.
Every process is stopped on exit, error or Ctrl-C. Needs Envoy: pip install 'wasm-agent[envoy]'.
Exit status: 0 every step happened, 1 a step failed (it is named), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from wasm_agent.agent.cli import EXIT_FAILED
from wasm_agent.core import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` flags."""
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave everything running after the story and print how to curl it (Ctrl-C stops)",
    )
    from wasm_agent.agent.fetch_settings import fetch_timeout  # the one duration syntax

    parser.add_argument(
        "--timeout",
        type=fetch_timeout,
        default=30.0,
        metavar="DURATION",
        help="how long each step may wait: 30s, 2m or bare seconds (default 30s)",
    )
    config.add_flags(parser, (config.ENVOY,), os.environ)  # --envoy [env WASM_AGENT_ENVOY]
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show wasm-agent's logs on stderr (default in a file in the work directory)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; see the module docstring for exit codes."""
    import asyncio

    # Set before gRPC is imported: our children (Envoy, the compile worker) exec at once, so
    # gRPC's fork handlers are moot, and without this gRPC prints a warning when Envoy forks.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from wasm_agent.xds import grpc_core

    grpc_core.configure()  # the in-process proxy runs as `wasm-agent proxy` does
    from wasm_agent.core.errors import UsageError
    from wasm_agent.demo.envoy import EnvoyNotFound, find_envoy

    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    try:
        from_env = config.values((config.ENVOY,), os.environ)["envoy"]
        # the flag's default is the variable's value: let find_envoy name the variable then
        envoy = find_envoy(args.envoy if args.envoy != from_env else None)
    except EnvoyNotFound as error:
        print(f"wasm-agent demo: {error}", file=sys.stderr)
        return EXIT_FAILED
    from wasm_agent.demo import DemoOptions, run_demo

    options = DemoOptions(
        keep_running=args.keep_running, timeout=args.timeout, verbose=args.verbose
    )
    return asyncio.run(run_demo(envoy, options))
