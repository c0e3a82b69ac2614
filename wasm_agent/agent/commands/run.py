"""Run one HTTP exchange through a Proxy-Wasm plugin in the reference host.

MODULE is a ``.wasm`` file, a ``.wat`` text file (compiled first), an ``http(s)://`` URL or an
``oci://`` reference (remote modules are fetched through the module cache, as ``check`` and
``prefetch`` do, with the same flags). Prints what the upstream would receive, what the client
would receive, the plugin's logs and its metrics (``--json`` for a machine-readable form;
``--log-level debug`` also shows the plugin's debug logs). Exit codes: 0 ok, 1 the module could
not be read, fetched or loaded (Envoy's message on stderr) or trapped during the exchange, 2
usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from wasm_agent.agent.fetch_settings import add_remote_module_flags
from wasm_agent.core import config as table
from wasm_agent.core.errors import UsageError

if TYPE_CHECKING:
    from wasm_agent.core.settings import FetchSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ModuleUnusable(Exception):
    """The module could not be read, fetched or compiled from text; exit 1."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` flags."""
    add = parser.add_argument
    add("module", metavar="MODULE",
        help="the plugin: .wasm or .wat file, http(s):// URL or oci:// reference")  # fmt: skip
    add("--config", default="", metavar="STR|@FILE", help="plugin configuration")
    add("--vm-config", default="", metavar="STR|@FILE", help="VM configuration")
    add("--root-id", default="", metavar="ID", help="the plugin's root_id (some SDKs need it)")
    add("--vm-id", default="", metavar="ID", help="the plugin's vm_id")
    add("-X", "--method", default="GET", metavar="METHOD", help="request method (default GET)")
    add("--path", default="/", metavar="PATH", help="request path (default /)")
    add("--authority", default="example.com", metavar="HOST",
        help="request :authority (default example.com)")  # fmt: skip
    add("-H", "--header", action="append", default=[], metavar="'K: V'",
        help="request header; repeatable")  # fmt: skip
    add("--body", default="", metavar="STR|@FILE", help="request body")
    add("--response-status", type=int, default=200, metavar="N",
        help="the upstream's response status (default 200)")  # fmt: skip
    add("-H-resp", "--response-header", action="append", default=[], dest="response_header",
        metavar="'K: V'", help="upstream response header; repeatable")  # fmt: skip
    add("--response-body", default="", metavar="STR|@FILE", help="upstream response body")
    add("--json", action="store_true", help="print JSON")
    add_remote_module_flags(parser)
    table.add_flags(parser, (table.CACHE_DIR, table.VERIFY_POLICY, *table.REGISTRY), os.environ)


_PLUGIN_LOG_LEVELS = {"debug": 1, "info": 2, "warning": 3, "error": 4}


def _value(spec: str, flag: str) -> bytes:
    if spec.startswith("@"):
        try:
            return Path(spec[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {spec[1:]}: {exc.strerror}") from exc
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


def _expected_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    sha = value.strip().lower().removeprefix("sha256:")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise UsageError(f"--sha256: not a sha256 hex digest: {value!r}")
    return sha


def run(args: argparse.Namespace) -> int:
    """Run one exchange; see the module docstring for exit codes."""
    plugin_config, vm_config = (
        _value(args.config, "--config"),
        _value(args.vm_config, "--vm-config"),
    )
    body, response_body = _value(args.body, "--body"), _value(args.response_body, "--response-body")
    request, response = _request(args)  # usage errors: cli.main exits 2
    sha = _expected_sha256(args.sha256)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    settings = None
    # a policy or a registry hosts directory named is checked (exit 2) even for a local file
    if args.verify_policy or getattr(args, "registry_config_dir", None):
        from wasm_agent.agent.fetch_settings import fetch_settings_from_env

        settings = fetch_settings_from_env(verify_policy=args.verify_policy, flags=args)
    try:
        wasm = _module_bytes(args, sha, settings)
    except ModuleUnusable as error:
        print(f"wasm-agent run: {error}", file=sys.stderr)
        return EXIT_FAILED
    from wasm_agent.agent.inputs import host_cache_dir
    from wasm_agent.cache.integrity import InsecureCache
    from wasm_agent.host.harness import LoadError, LogLevel, start_plugin

    try:
        compiled_dir = host_cache_dir(args.cache_dir)
    except InsecureCache as error:
        print(f"wasm-agent run: {error.cause}", file=sys.stderr)
        return EXIT_FAILED
    level = LogLevel(_PLUGIN_LOG_LEVELS.get(getattr(args, "log_level", "info"), LogLevel.INFO))
    try:
        host = start_plugin(
            wasm,
            plugin_config=plugin_config,
            vm_config=vm_config,
            log_level=level,
            root_id=args.root_id,
            vm_id=args.vm_id,
            cache_dir=compiled_dir,
        )
    except LoadError as exc:
        print(f"wasm-agent run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    result = host.exchange(request, body, response, response_body)
    result.logs = list(host.logs)  # include what the plugin logged while it started
    metrics = host.metrics
    if args.json:
        print(json.dumps({**result.to_dict(), "metrics": metrics}, indent=2))
    else:
        _print_text(result, metrics)
    return EXIT_FAILED if result.failed else EXIT_OK


def _module_bytes(
    args: argparse.Namespace, sha: str | None, settings: FetchSettings | None
) -> bytes:
    """MODULE's Wasm bytes: read, fetched through the cache, or compiled from WAT.
    ``settings``: the fetch settings when ``run`` has built them already (a verify policy)."""
    module: str = args.module
    scheme = module.split("://", 1)[0].lower() if "://" in module else ""
    if scheme in ("http", "https", "oci"):
        return _fetch(args, module, sha, settings)
    if scheme == "file":
        from urllib.parse import unquote, urlsplit

        module = unquote(urlsplit(module).path)
    elif scheme:
        raise UsageError(f"{module}: unsupported scheme {scheme!r} (use a path, http(s) or oci)")
    path = Path(module).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModuleUnusable(f"cannot read {module}: no such file") from None
    except IsADirectoryError:
        raise ModuleUnusable(f"cannot read {module}: is a directory, not a module") from None
    except OSError as error:
        raise ModuleUnusable(f"cannot read {module}: {error.strerror}") from None
    if sha is not None:
        import hashlib

        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise ModuleUnusable(f"{module}: sha256 {actual} does not match --sha256 {sha}")
    from wasm_agent.agent.inputs import NotWasmText, compile_wat, is_wasm_text

    if not is_wasm_text(path, data):
        return data
    try:
        return compile_wat(module, data)
    except NotWasmText as error:
        raise ModuleUnusable(str(error)) from None


def _fetch(
    args: argparse.Namespace, url: str, sha: str | None, settings: FetchSettings | None
) -> bytes:
    from wasm_agent.agent.fetch_settings import fetch_settings_from_env
    from wasm_agent.agent.inputs import read_pull_secret, with_flag_hints
    from wasm_agent.cache.model import ModuleRequest
    from wasm_agent.check.fetching import fetch_all
    from wasm_agent.core.settings import with_insecure_registries
    from wasm_agent.fetch.dispatch import normalize_url

    secret = read_pull_secret(args.pull_secret) if args.pull_secret is not None else None
    if settings is None:
        settings = fetch_settings_from_env(verify_policy=args.verify_policy, flags=args)
    settings = with_insecure_registries(settings, args.insecure_registry)
    request = ModuleRequest(
        url=normalize_url(url), sha256=sha, pull_secret=secret, timeout=args.timeout
    )
    [(outcome, _note)] = fetch_all([request], settings, args.cache_dir)
    if isinstance(outcome, str):
        raise ModuleUnusable(with_flag_hints(outcome))
    return outcome[0]


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


def _print_text(result: object, metrics: dict[str, int | list[int]]) -> None:
    _print_message("upstream request", result.upstream)  # type: ignore[attr-defined]
    _print_message("client response", result.client)  # type: ignore[attr-defined]
    print("== logs ==")
    for entry in result.logs:  # type: ignore[attr-defined]
        print(f"[{entry.level.name.lower()}] {entry.message}")
    print("== metrics ==")
    if not metrics:
        print("(none)")
    for name, value in sorted(metrics.items()):
        print(f"{name} {value}")
    if result.failed:  # type: ignore[attr-defined]
        print(f"== plugin failed ==\n{result.failed}")  # type: ignore[attr-defined]
