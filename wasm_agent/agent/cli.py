"""The ``wasm-agent`` entry point: one command, subcommands imported only when used.

Start-up time matters (a warm ``prefetch`` must finish in well under 100 ms), so this module
imports nothing heavy: each subcommand's module is imported only when that subcommand runs.
Exit codes (:data:`EXIT_RULE`, printed at the end of every ``--help``): 0 success, 1 the
operation failed, 2 the command line, a variable or a file that configures the command cannot be
used: a command raises :class:`~wasm_agent.core.errors.UsageError` (settings errors are usage
errors too) and :func:`main` prints it and exits 2; argparse exits 2 for bad flags itself.
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
EXIT_RULE = (
    "Exit status: 0 success; 1 the operation failed: a module could not be read, fetched, "
    "verified, compiled or loaded, failed a check or trapped, or the cache could not be used; "
    "2 the command line cannot be used: a bad flag or environment variable, or a file that "
    "configures the command (--config @FILE, --pull-secret, --spec, -f manifest, TLS, token or "
    "policy file) that is missing, unreadable or malformed."
)
# long-running commands keep ``info`` on a terminal (their start-up line says they run)
_INFO_ON_TERMINAL = frozenset({"proxy", "demo", "node"})
_FETCHING = frozenset({"prefetch", "proxy", "check", "run", "node"})  # HTTP(S)_PROXY ignored

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
        epilog=EXIT_RULE,
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
        epilog=EXIT_RULE,
    )
    add_log_flags(parser)
    module.add_arguments(parser)
    return parser


def add_log_flags(parser: argparse.ArgumentParser, *, again: bool = False) -> None:
    """``--log-level`` and ``--log-format`` (from the configuration table).

    ``again``: for a subcommand's own parser (``cache ls --log-level debug``); its flags do not
    overwrite a value given before the subcommand when they are absent.
    """
    import os

    from wasm_agent.core import config

    config.add_flags(parser, config.LOG, os.environ, again=again)


def log_level(name: str, given: str | None, stderr_is_terminal: bool) -> str:
    """The level to log at: ``given`` (flag or variable), else ``warning`` on a terminal for the
    one-shot commands (info lines would break ``prefetch``'s progress bars), else ``info``."""
    if given:
        return given
    return "warning" if stderr_is_terminal and name not in _INFO_ON_TERMINAL else "info"


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

        options.log_level = log_level(name, options.log_level, _stderr_is_terminal())
        setup_logging(options.log_level, options.log_format)
        if name in _FETCHING and _proxy_variable_set():
            from wasm_agent.agent.inputs import warn_ignored_proxy_variables

            warn_ignored_proxy_variables()
        return int(module.run(options))
    except UsageError as error:  # the one place a usage error becomes exit status 2
        print(f"wasm-agent {name}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _proxy_variable_set() -> bool:
    import os

    return any(os.environ.get(n) for n in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")) or any(
        os.environ.get(n) for n in ("https_proxy", "http_proxy", "all_proxy")
    )


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


if __name__ == "__main__":
    raise SystemExit(main())
