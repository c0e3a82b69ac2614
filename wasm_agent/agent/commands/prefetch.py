"""Fetch, verify and cache Wasm modules (warm a node or an image).

Modules are given as URLs (``http(s)://``, ``oci://``, ``file://`` or a path; no scheme means
OCI) or read from Istio ``WasmPlugin`` manifests with ``-f``. Each is fetched (concurrently),
checked against its sha256, compiled with wasmtime, and stored in the cache directory. A
module already cached is served without network or compile, so a warm run is fast.
Exit status: 0 all modules ready, 1 any failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from wasm_agent.agent.cli import EXIT_FAILED, EXIT_OK
from wasm_agent.agent.fetch_settings import add_remote_module_flags, fetch_settings_from_env
from wasm_agent.cache.layout import HEX64
from wasm_agent.cache.model import CachedModule, ModuleRequest
from wasm_agent.cache.module_cache import ModuleCache
from wasm_agent.core import config
from wasm_agent.core.errors import UsageError
from wasm_agent.core.settings import cache_settings_from_env, with_insecure_registries
from wasm_agent.fetch.errors import FetchError
from wasm_agent.fetch.model import normalize_sha256

if TYPE_CHECKING:
    from wasm_agent.xds.converter import ModuleStore


@dataclass
class Result:
    """One module's outcome, printed as a line or a JSON object."""

    url: str
    sha256: str | None = None
    path: str | None = None
    size: int | None = None
    cached: bool = False
    error: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``prefetch`` flags."""
    parser.add_argument("urls", nargs="*", metavar="URL", help="module URL or path")
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="Istio WasmPlugin manifest (YAML, several documents allowed); repeatable",
    )
    from wasm_agent.node.settings import NODE_SOCKET

    add_remote_module_flags(parser, noun="URL")
    rows = (config.CACHE_DIR, config.CACHE_MAX_BYTES, config.VERIFY_POLICY, *config.REGISTRY)
    rows = (*rows, NODE_SOCKET)
    config.add_flags(parser, rows, os.environ)
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")


def _requests(args: argparse.Namespace) -> list[ModuleRequest]:
    if not args.urls and not args.files:
        raise UsageError("give at least one URL or -f FILE")
    sha = None
    if args.sha256 is not None:
        if len(args.urls) != 1 or args.files:
            raise UsageError("--sha256 applies to exactly one URL")
        sha = normalize_sha256(args.sha256)
        if sha is None or not HEX64.fullmatch(sha):
            raise UsageError(f"--sha256: not a sha256 hex digest: {args.sha256!r}")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    secret = None
    if args.pull_secret is not None:  # missing, unreadable or malformed: exit 2
        from wasm_agent.agent.inputs import read_pull_secret

        secret = read_pull_secret(args.pull_secret)
    common = {"pull_secret": secret, "timeout": args.timeout}
    requests = [ModuleRequest(url=url, sha256=sha, **common) for url in args.urls]
    for path in args.files:
        requests.extend(_manifest_requests(path, common))
    return requests


def _manifest_requests(path: Path, common: dict) -> list[ModuleRequest]:
    from wasm_agent.agent.wasmplugin import plugin_requests

    return plugin_requests(path, **common)


def run(args: argparse.Namespace) -> int:
    """Prefetch every module; print one result per module."""
    requests = _requests(args)  # usage errors: cli.main exits 2
    fetch_settings = fetch_settings_from_env(verify_policy=args.verify_policy, flags=args)
    fetch_settings = with_insecure_registries(fetch_settings, args.insecure_registry)
    cache_settings = cache_settings_from_env(args.cache_dir)
    cache_settings = replace(cache_settings, max_bytes=args.cache_max_bytes)  # the flag wins
    if args.node_socket:  # modules from the node service, in the pod's CSI volume
        from wasm_agent.node.client import NodeModuleSource

        cache = NodeModuleSource(args.node_socket)
    else:
        cache = ModuleCache(cache_settings, fetch_settings)
    results: list[Result | None] = [None] * len(requests)
    for i, request in enumerate(requests):  # warm path: no event loop, no network
        try:
            found = cache.lookup(request)
        except FetchError as error:
            results[i] = Result(url=request.url, error=error.cause)
            continue
        if found is not None:
            results[i] = _result(request, found)
            _keep(cache, found)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        import asyncio

        fetched = asyncio.run(_fetch_all(cache, [requests[i] for i in missing]))
        for i, result in zip(missing, fetched, strict=True):
            results[i] = result
    return _report([r for r in results if r is not None], args.json)


def _keep(cache: ModuleStore, module: CachedModule) -> None:
    """Hold ``module`` for the rest of the run: a later one never evicts it (--cache-max-bytes)."""
    with contextlib.suppress(LookupError):  # removed by another process meanwhile
        cache.hold(f"prefetch:{module.sha256}", [module])


def _result(request: ModuleRequest, found: CachedModule) -> Result:
    return Result(
        url=request.url,
        sha256=found.sha256,
        path=str(found.path),
        size=found.size,
        cached=found.hit,
    )


async def _fetch_all(cache: ModuleCache, requests: list[ModuleRequest]) -> list[Result]:
    from wasm_agent.agent.progress import ProgressDisplay
    from wasm_agent.cache.many import Outcome, fetch_many
    from wasm_agent.core.logs import redact_url

    display = ProgressDisplay()

    def done(request: ModuleRequest, outcome: Outcome) -> None:
        failed = isinstance(outcome, FetchError)
        if not isinstance(outcome, FetchError):
            _keep(cache, outcome)
        display.finish(redact_url(request.url), "failed" if failed else "done")

    outcomes = await fetch_many(
        cache, requests, progress=lambda r: display.callback(redact_url(r.url)), done=done
    )
    return [
        Result(url=r.url, error=o.cause) if isinstance(o, FetchError) else _result(r, o)
        for r, o in zip(requests, outcomes, strict=True)
    ]


def _report(results: list[Result], as_json: bool) -> int:
    from wasm_agent.core.logs import redact_url, scrub

    # what is printed never carries a URL's user-info or query, nor a secret an error quotes
    results = [
        replace(r, url=redact_url(r.url), error=scrub(r.error) if r.error else r.error)
        for r in results
    ]
    failed = [r for r in results if r.error]
    if as_json:
        json.dump([r.__dict__ for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            if not r.error:
                print(f"{r.url} {r.sha256} {r.path}")
    if failed:
        from wasm_agent.agent.inputs import with_flag_hints

        for r in failed:
            print(
                f"wasm-agent prefetch: {r.url}: {with_flag_hints(r.error or '')}", file=sys.stderr
            )
    return EXIT_FAILED if failed else EXIT_OK
