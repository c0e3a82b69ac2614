"""Reading Istio ``WasmPlugin`` manifests (YAML, multi-document) for ``prefetch -f`` and
``check -f``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wasm_agent.core.errors import UsageError


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

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read: {error}") from None
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
