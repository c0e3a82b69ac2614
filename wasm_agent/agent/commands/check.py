"""Check that Wasm plugins are valid, load in Envoy and behave (a CI gate).

MODULE is a local path, an ``http(s)://`` URL or an ``oci://`` reference (remote modules are
fetched through the module cache, with ``prefetch``'s options); ``-f`` reads Istio
``WasmPlugin`` manifests (url, sha256, and pluginConfig as the configuration). Each module gets
structure, Envoy-compatibility and load checks, plus the behaviour cases of ``--spec``.
Exit status: 0 every module passed, 1 any check failed (a module that cannot be read or
fetched too), 2 usage error (bad flags; a --config, --pull-secret, --spec or -f file that is
missing, unreadable or does not parse).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wasm_agent.agent.fetch_settings import add_remote_module_flags
from wasm_agent.core import config as table
from wasm_agent.core.errors import UsageError
from wasm_agent.core.logs import redact_url

if TYPE_CHECKING:
    from wasm_agent.cache.model import ModuleRequest
    from wasm_agent.check.model import ModuleReport
    from wasm_agent.core.settings import FetchSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
ABI_VERSIONS = ("0.1.0", "0.2.0", "0.2.1")


@dataclass
class Target:
    """One module to check."""

    module: str  # as given
    url: str | None  # remote URL (normalized), None for a local file
    path: Path | None
    sha256: str | None = None
    config: bytes | None = None  # None: the --config value
    plugin: str | None = None
    origin: str | None = None
    pull_policy: str = ""
    root_id: str | None = None  # None: the --root-id value
    plugin_type: str = ""  # WasmPlugin spec.type (HTTP when empty)
    request: ModuleRequest | None = None  # a WasmPlugin's, validated like prefetch's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``check`` flags."""
    add = parser.add_argument
    add("modules", nargs="*", metavar="MODULE",
        help="path (.wasm or .wat), http(s):// URL or oci:// reference")  # fmt: skip
    add("-f", "--filename", dest="files", action="append", type=Path, default=[], metavar="FILE",
        help="Istio WasmPlugin manifest (YAML, several documents allowed); repeatable")  # fmt: skip
    add("--config", default="", metavar="STR|@FILE",
        help="plugin configuration for MODULEs (manifests use their pluginConfig)")  # fmt: skip
    add("--root-id", default="", metavar="ID",
        help="root_id (WasmPlugin pluginName) for MODULEs (default empty)")  # fmt: skip
    add("--spec", type=Path, metavar="FILE", help="behaviour spec (YAML, see docs/check.md)")
    add("--format", choices=("text", "json", "junit"), default="text", metavar="text|json|junit",
        help="output format (default text)")  # fmt: skip
    add("--envoy-abi", choices=ABI_VERSIONS, default="0.2.1", metavar="|".join(ABI_VERSIONS),
        help="newest Proxy-Wasm ABI version the target Envoy serves (default 0.2.1)")  # fmt: skip
    add_remote_module_flags(parser)
    add("--allow-capability", dest="allow_capabilities", action="append", default=None,
        metavar="NAME",
        help="an ABI function the plugin may call, as in Envoy's capability_restriction_config "
             "(repeatable; default: the spec's capabilities, else all); a call outside the list "
             "fails as in Envoy, and imports outside it are reported")  # fmt: skip
    table.add_flags(parser, (table.CACHE_DIR, table.VERIFY_POLICY, *table.REGISTRY), os.environ)


def _read_value(spec: str, flag: str) -> bytes:
    if not spec.startswith("@"):
        return spec.encode()
    path = Path(spec[1:])
    try:
        if path.is_dir():
            raise UsageError(f"{flag}: {path} is a directory")
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"{flag}: cannot read {path}: {error.strerror}") from None


def _is_url(module: str) -> bool:
    return "://" in module and module.split("://", 1)[0].isalpha()


def _target(module: str, sha256: str | None) -> Target:
    if not _is_url(module):
        return Target(module, None, Path(module), sha256)
    from wasm_agent.fetch.dispatch import normalize_url, url_scheme

    url = normalize_url(module)
    scheme = url_scheme(url)
    if scheme == "file":
        from wasm_agent.fetch.errors import FetchError
        from wasm_agent.fetch.file import path_from_url

        try:
            return Target(module, None, path_from_url(url), sha256)
        except FetchError as error:
            raise UsageError(f"{redact_url(module)}: {error.cause}") from None
    if scheme not in ("http", "https", "oci"):
        raise UsageError(
            f"{redact_url(module)}: unsupported scheme {scheme!r} (use a path, http(s) or oci)"
        )
    return Target(module, url, None, sha256)


def _targets(args: argparse.Namespace) -> list[Target]:
    if not args.modules and not args.files:
        raise UsageError("give at least one MODULE or -f FILE")
    sha = None
    if args.sha256 is not None:
        if len(args.modules) != 1 or args.files:
            raise UsageError("--sha256 applies to exactly one MODULE")
        sha = _normalize_sha256(args.sha256)
        if sha is None or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise UsageError(f"--sha256: not a sha256 hex digest: {args.sha256!r}")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    targets = [_target(m, sha) for m in args.modules]
    for path in args.files:
        targets.extend(_manifest_targets(path))
    return targets


def shown_module(target: Target) -> str:
    """How the report names a module: as given, without URL user-info or query (either may
    carry a credential); a local path is shown as is."""
    if "://" in target.module:
        return redact_url(target.module)
    if target.url is None:
        return target.module
    return redact_url(target.url).removeprefix("oci://")  # schemeless OCI, as given


def _normalize_sha256(value: str) -> str | None:
    """Like ``wasm_agent.fetch.model.normalize_sha256``, without importing the fetch package
    (a check of local modules never fetches)."""
    value = value.strip().lower().removeprefix("sha256:")
    return None if value in ("", "nil") else value


def _manifest_targets(path: Path) -> list[Target]:
    from wasm_agent.agent.wasmplugin import load_wasmplugins, plugin_request
    from wasm_agent.fetch.dispatch import normalize_url

    targets = []
    for plugin in load_wasmplugins(path):
        request = plugin_request(plugin)  # the same validation as prefetch -f
        url = normalize_url(plugin.url)  # Istio's rule: no scheme means OCI
        target = _target(url, _normalize_sha256(plugin.sha256) if plugin.sha256 else None)
        target.module = plugin.url
        target.plugin, target.origin = plugin.name, plugin.origin
        target.pull_policy, target.root_id = plugin.pull_policy, plugin.root_id
        target.plugin_type = (plugin.plugin_type or "HTTP").upper()
        target.config = (plugin.plugin_config or "").encode()
        target.request = request
        targets.append(target)
    return targets


def run(args: argparse.Namespace) -> int:
    """Check every module, print the report, return the exit status."""
    from wasm_agent.agent.fetch_settings import fetch_settings_from_env
    from wasm_agent.check.spec import SpecError, load_spec

    targets = _targets(args)  # usage errors: cli.main exits 2
    config = _read_value(args.config, "--config")
    try:
        spec = load_spec(args.spec) if args.spec is not None else None
    except SpecError as error:
        raise UsageError(str(error)) from None
    fetch_settings = fetch_settings_from_env(verify_policy=args.verify_policy, flags=args)
    secret = None
    if args.pull_secret is not None:  # missing, unreadable or malformed: exit 2
        from wasm_agent.agent.inputs import read_pull_secret

        secret = read_pull_secret(args.pull_secret)
    from wasm_agent.agent.inputs import host_cache_dir
    from wasm_agent.cache.integrity import InsecureCache

    try:  # the reference host's compile cache follows --cache-dir (host/compile.py reads it)
        os.environ["WASM_AGENT_HOST_CACHE"] = str(host_cache_dir(args.cache_dir))
    except InsecureCache as error:
        print(f"wasm-agent check: {error.cause}", file=sys.stderr)
        return EXIT_FAILED
    from wasm_agent.check.compat import check_plugin_type
    from wasm_agent.check.model import ModuleReport
    from wasm_agent.check.runner import Options

    allowed = frozenset(args.allow_capabilities) if args.allow_capabilities else None
    options = Options(envoy_abi=args.envoy_abi, spec=spec, allowed_capabilities=allowed)
    reports = [
        ModuleReport(
            module=shown_module(t),
            url=redact_url(t.url) if t.url is not None else None,
            plugin=t.plugin,
            origin=t.origin,
        )
        for t in targets
    ]
    blobs = _load_all(args, targets, reports, fetch_settings, secret)
    from wasm_agent.check.runner import check_module

    for target, report, data in zip(targets, reports, blobs, strict=True):
        if data is not None:
            module_config = target.config if target.config is not None else config
            root_id = target.root_id if target.root_id is not None else args.root_id
            check_module(report, data, module_config, options, root_id)
            if target.plugin is not None:
                check_plugin_type(report, target.plugin_type)
    try:
        _output(reports, args.format)
    except BrokenPipeError:  # `check ... | head`: the reader left; the status still counts
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK if all(r.passed for r in reports) else EXIT_FAILED


def _load_all(
    args: argparse.Namespace,
    targets: list[Target],
    reports: list[ModuleReport],
    fetch_settings: FetchSettings,
    secret: bytes | None,
) -> list[bytes | None]:
    """Module bytes per target (None when reading or fetching failed: an ``input`` check)."""
    from wasm_agent.check.model import Check, Status
    from wasm_agent.check.runner import InputError, read_local

    blobs: list[bytes | None] = [None] * len(targets)
    remote = []
    for i, (target, report) in enumerate(zip(targets, reports, strict=True)):
        if target.path is None:
            remote.append(i)
            continue
        try:
            data = read_local(target.path, fetch_settings.max_binary_size)
        except InputError as error:
            report.add(Check("input", "read", Status.FAIL, str(error)))
            continue
        from wasm_agent.agent.inputs import NotWasmText, compile_wat, is_wasm_text

        if is_wasm_text(target.path, data):  # WebAssembly text: compiled first, as run does
            try:
                data = compile_wat(target.module, data)
            except NotWasmText as error:
                report.add(Check("input", "read", Status.FAIL, str(error)))
                continue
        if target.sha256 is not None:
            import hashlib

            actual = hashlib.sha256(data).hexdigest()
            if actual != target.sha256:
                report.add(Check("input", "sha256", Status.FAIL,
                                 f"module has sha256 {actual}, which does not match "
                                 f"{target.sha256}"))  # fmt: skip
                continue
            report.add(Check("input", "sha256", Status.PASS, "matches the expected sha256"))
        blobs[i] = data
    if remote:
        from wasm_agent.check.fetching import fetch_all
        from wasm_agent.core.settings import with_insecure_registries

        requests = [_request(targets[i], secret, args.timeout) for i in remote]
        settings = with_insecure_registries(fetch_settings, args.insecure_registry)
        fetched = fetch_all(requests, settings, args.cache_dir)
        for i, (outcome, detail) in zip(remote, fetched, strict=True):
            report = reports[i]
            if isinstance(outcome, str):
                from wasm_agent.agent.inputs import with_flag_hints

                report.add(Check("input", "fetch", Status.FAIL, with_flag_hints(outcome)))
                continue
            data, report.sha256, report.oci_digest = outcome
            report.add(Check("input", "fetch", Status.PASS, detail))
            blobs[i] = data
    return blobs


def _request(target: Target, secret: bytes | None, timeout: float) -> ModuleRequest:
    """The cache request for a remote target: its WasmPlugin's, else the MODULE and --sha256."""
    from dataclasses import replace

    from wasm_agent.cache.model import ModuleRequest

    if target.request is not None:
        return replace(target.request, pull_secret=secret, timeout=timeout)
    assert target.url is not None  # only remote targets are fetched
    return ModuleRequest(url=target.url, sha256=target.sha256, pull_secret=secret, timeout=timeout)


def _output(reports, fmt: str) -> None:
    from wasm_agent.check import report as render

    if fmt == "json":
        render.write_json(reports, sys.stdout)
    elif fmt == "junit":
        render.write_junit(reports, sys.stdout)
    else:
        render.write_text(reports, sys.stdout)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        stream = sys.stdout if fmt == "text" else sys.stderr  # keep JSON/XML parseable
        for line in render.github_annotations(reports):
            print(line, file=stream)
    sys.stdout.flush()
