"""Reading Istio ``WasmPlugin`` manifests (YAML, multi-document) for ``prefetch -f`` and
``check -f``, and the one validation policy turning them into module requests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wasm_agent.cache.layout import HEX64
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.cache.policy import PullPolicy
from wasm_agent.core.errors import UsageError
from wasm_agent.fetch.model import normalize_sha256


class ManifestError(UsageError, ValueError):
    """A manifest cannot be read or used; the message names the file and line."""


@dataclass(frozen=True)
class PluginSource:
    """The module a WasmPlugin names: ``spec.url``, ``spec.sha256``, ``spec.imagePullPolicy``."""

    url: str
    sha256: str | None
    pull_policy: str
    name: str
    origin: str  # "file:line"
    plugin_config: str | None = None  # spec.pluginConfig as compact JSON (what Envoy receives)
    plugin_type: str = ""  # spec.type: HTTP (default) or NETWORK
    root_id: str = ""  # spec.pluginName: Envoy's root_id


def load_wasmplugins(path: Path) -> list[PluginSource]:
    """Every WasmPlugin in ``path`` (other kinds are skipped; ``kind: List`` is expanded).

    Raises :class:`ManifestError` for unreadable files, YAML errors, a WasmPlugin without
    ``spec.url``, or a file with no WasmPlugin at all.
    """
    import yaml

    text = _read_manifest(path)
    loader = yaml.SafeLoader(text)
    plugins: list[PluginSource] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1 if node is not None else 0
            doc = loader.construct_document(node) if node is not None else None
            plugins.extend(_plugins(doc, f"{path}:{line}"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ManifestError(f"{where}: invalid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: invalid YAML: {error}") from None
    finally:
        loader.dispose()
    if not plugins:
        raise ManifestError(f"{path}: no WasmPlugin resource found")
    return plugins


def _read_manifest(path: Path) -> str:
    """The text of ``-f FILE``; the error names the flag and the file as for the other file
    flags (``-f FILE: cannot read: no such file``), without a raw errno."""
    where = f"-f {path}: cannot read"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ManifestError(f"{where}: is a directory, not a file") from None
    except OSError as error:
        raise ManifestError(f"{where}: {(error.strerror or str(error)).lower()}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: not UTF-8 text") from None


def plugin_request(
    plugin: PluginSource, *, pull_secret: bytes | None = None, timeout: float | None = None
) -> ModuleRequest:
    r"""What ``plugin`` asks the cache for. One policy for ``prefetch`` and ``check``: a
    ``spec.sha256`` that is not a sha256 hex digest and an unknown ``spec.imagePullPolicy`` are
    :class:`ManifestError`\ s (usage errors) naming the file and line."""
    sha = normalize_sha256(plugin.sha256)
    if sha is not None and not HEX64.fullmatch(sha):
        raise ManifestError(f"{plugin.origin}: spec.sha256 is not a sha256 hex digest")
    try:
        policy = PullPolicy.parse(plugin.pull_policy)
    except ValueError as error:
        raise ManifestError(f"{plugin.origin}: spec.imagePullPolicy: {error}") from None
    return ModuleRequest(
        url=plugin.url,
        sha256=sha,
        pull_policy=policy,
        resource_name=plugin.name,
        pull_secret=pull_secret,
        timeout=timeout,
    )


def plugin_requests(
    path: Path, *, pull_secret: bytes | None = None, timeout: float | None = None
) -> list[ModuleRequest]:
    """A :func:`plugin_request` for every WasmPlugin in the manifest ``path``."""
    return [
        plugin_request(plugin, pull_secret=pull_secret, timeout=timeout)
        for plugin in load_wasmplugins(path)
    ]


def _plugins(doc: object, origin: str) -> list[PluginSource]:
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ManifestError(f"{origin}: a document must be a mapping, not {type(doc).__name__}")
    if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return [p for item in doc["items"] for p in _plugins(item, origin)]
    if doc.get("kind") != "WasmPlugin":
        return []
    name = str((doc.get("metadata") or {}).get("name", ""))
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError(f"{origin}: WasmPlugin {name!r} has no spec")
    url = spec.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ManifestError(f"{origin}: WasmPlugin {name!r} has no spec.url")
    sha = spec.get("sha256")
    if sha is not None and not isinstance(sha, str):
        raise ManifestError(f"{origin}: WasmPlugin {name!r}: spec.sha256 must be a string")
    policy = spec.get("imagePullPolicy") or ""
    config = spec.get("pluginConfig")
    config_json = (
        json.dumps(config, separators=(",", ":"), default=str) if config is not None else None
    )
    kind = str(spec.get("type") or "")
    root_id = str(spec.get("pluginName") or "")
    return [
        PluginSource(
            url.strip(), sha or None, str(policy), name, origin, config_json, kind, root_id
        )
    ]
