"""Run one HTTP exchange through a Proxy-Wasm plugin in the reference host.

Prints what the upstream would receive, what the client would receive, and the plugin's logs
(``--json`` for a machine-readable form; ``--log-level debug`` also shows the plugin's debug
logs). Exit codes: 0 ok, 1 the module failed to load (Envoy's message on stderr) or trapped
during the exchange, 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wasm_agent.core.errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", help="the .wasm plugin")
    parser.add_argument("--config", default="", help="plugin configuration: STR or @FILE")
    parser.add_argument("--vm-config", default="", help="VM configuration: STR or @FILE")
    parser.add_argument("--root-id", default="", help="the plugin's root_id (some SDKs need it)")
    parser.add_argument("--vm-id", default="", help="the plugin's vm_id")
    parser.add_argument("-X", "--method", default="GET", help="request method (default GET)")
    parser.add_argument("--path", default="/", help="request path (default /)")
    parser.add_argument("--authority", default="example.com", help="request :authority")
    parser.add_argument(
        "-H", "--header", action="append", default=[], metavar="'K: V'", help="request header"
    )
    parser.add_argument("--body", default="", help="request body: STR or @FILE")
    parser.add_argument("--response-status", type=int, default=200, metavar="N")
    parser.add_argument(
        "-H-resp",
        "--response-header",
        action="append",
        default=[],
        dest="response_header",
        metavar="'K: V'",
        help="upstream response header",
    )
    parser.add_argument("--response-body", default="", help="upstream response body: STR or @FILE")
    parser.add_argument("--json", action="store_true", help="print JSON")


_PLUGIN_LOG_LEVELS = {"debug": 1, "info": 2, "warning": 3, "error": 4}


def _value(spec: str) -> bytes:
    if spec.startswith("@"):
        try:
            return Path(spec[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {spec[1:]}: {exc.strerror}") from exc
    return spec.encode()


def _header(spec: str) -> tuple[str, str]:
    name, sep, value = spec.partition(":")
    if name.startswith(":") and sep:  # pseudo-header like ':path: /x'
        rest_name, sep2, rest_value = value.partition(":")
        name, value, sep = ":" + rest_name, rest_value, sep2
    if not sep or not name.strip():
        raise UsageError(f"bad header {spec!r}: want 'name: value'")
    return name.strip().lower(), value.strip()


def _request(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    request = [(":method", args.method), (":path", args.path), (":authority", args.authority)]
    request += [("x-request-id", "wasm-agent-run"), (":scheme", "http")]
    request += [_header(h) for h in args.header]
    response = [(":status", str(args.response_status))]
    response += [_header(h) for h in args.response_header]
    return request, response


def run(args: argparse.Namespace) -> int:
    try:
        wasm = Path(args.module).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.module}: {exc.strerror}") from None
    plugin_config, vm_config = _value(args.config), _value(args.vm_config)
    body, response_body = _value(args.body), _value(args.response_body)
    request, response = _request(args)  # usage errors: cli.main exits 2
    from wasm_agent.host.harness import LoadError, LogLevel, start_plugin

    level = LogLevel(_PLUGIN_LOG_LEVELS.get(getattr(args, "log_level", "info"), LogLevel.INFO))
    try:
        host = start_plugin(
            wasm,
            plugin_config=plugin_config,
            vm_config=vm_config,
            log_level=level,
            root_id=args.root_id,
            vm_id=args.vm_id,
        )
    except LoadError as exc:
        print(f"wasm-agent run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    result = host.exchange(request, body, response, response_body)
    result.logs = list(host.logs)  # include what the plugin logged while it started
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_text(result)
    return EXIT_FAILED if result.failed else EXIT_OK


def _print_message(title: str, message: object) -> None:
    print(f"== {title} ==")
    if message is None:
        print("(nothing)")
        return
    for key, value in message.headers.pairs():  # type: ignore[attr-defined]
        print(f"{key}: {value}")
    body = bytes(message.body)  # type: ignore[attr-defined]
    if body:
        print()
        print(body.decode("utf-8", "replace"))
    if message.trailers is not None:  # type: ignore[attr-defined]
        for key, value in message.trailers.pairs():  # type: ignore[attr-defined]
            print(f"{key}: {value}")


def _print_text(result: object) -> None:
    _print_message("upstream request", result.upstream)  # type: ignore[attr-defined]
    _print_message("client response", result.client)  # type: ignore[attr-defined]
    print("== logs ==")
    for entry in result.logs:  # type: ignore[attr-defined]
        print(f"[{entry.level.name.lower()}] {entry.message}")
    if result.failed:  # type: ignore[attr-defined]
        print(f"== plugin failed ==\n{result.failed}")  # type: ignore[attr-defined]
