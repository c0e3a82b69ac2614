"""The ``wasm-agent`` entry point: one command, subcommands imported only when used.

Start-up time matters (a warm ``prefetch`` must finish in well under 100 ms), so this module
imports nothing heavy: each subcommand's module is imported only when that subcommand runs.
Exit codes: 0 success, 1 failed operation, 2 usage error: a command raises
:class:`~wasm_agent.core.errors.UsageError` (settings errors are usage errors too) and
:func:`main` prints it and exits 2; argparse exits 2 for bad flags itself.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# name -> (module implementing it, one-line summary)
_CMD = "wasm_agent.agent.commands."
COMMANDS: dict[str, tuple[str, str]] = {
    "prefetch": (
        _CMD + "prefetch",
        "fetch, verify and cache Wasm modules (warm a node or an image)",
    ),
    "proxy": (
        _CMD + "proxy",
        "run the sidecar xDS proxy between Envoy and istiod",
    ),
    "check": (
        _CMD + "check",
        "check that Wasm plugins are valid and behave (CI)",
    ),
    "run": (
        _CMD + "run",
        "one HTTP exchange through a plugin in the reference host",
    ),
    "cache": (_CMD + "cache", "list, verify and prune the module cache"),
    "demo": (_CMD + "demo", "run a self-contained demo on 127.0.0.1"),
    "node": (_CMD + "node", "the trusted node service: a CSI driver placing modules in pods"),
}


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasm-agent",
        description="Distributes Proxy-Wasm extensions to Envoy.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, summary) in COMMANDS.items():
        if _available(name):
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _available(name: str) -> bool:
    module_name = COMMANDS[name][0]
    return importlib.util.find_spec(module_name) is not None


def _command_parser(name: str, module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"wasm-agent {name}",
        description=(module.__doc__ or COMMANDS[name][1]).strip().splitlines()[0],
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; return the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        parser = _top_level_parser()
        options = parser.parse_args(args)  # exits 0 on --help, 2 on bad usage
        if options.version:
            from wasm_agent import __version__

            print(f"wasm-agent {__version__}")
            return EXIT_OK
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name, rest = args[0], args[1:]
    if name not in COMMANDS or not _available(name):
        _top_level_parser().error(f"unknown command {name!r}")
    module = importlib.import_module(COMMANDS[name][0])
    from wasm_agent.core.errors import UsageError

    try:
        options = _command_parser(name, module).parse_args(rest)
        from wasm_agent.core.logs import setup_logging

        setup_logging(options.log_level)
        return int(module.run(options))
    except UsageError as error:  # the one place a usage error becomes exit status 2
        print(f"wasm-agent {name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
