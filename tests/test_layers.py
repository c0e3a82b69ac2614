"""The package layers (docs/design.md, "Layers"): every import of every module goes downward.

Imports are read with ``ast``: top-level, in-function and ``TYPE_CHECKING`` ones alike.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "wasm_agent"

# layer -> the layers it may import (besides itself); "*" is everything
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "fetch": frozenset({"core"}),
    "cache": frozenset({"core", "fetch"}),
    "xds": frozenset({"core", "fetch", "cache"}),
    "host": frozenset({"core"}),
    "check": frozenset({"core", "fetch", "cache", "host"}),
    "demo": frozenset({"core", "fetch", "cache", "xds"}),
    "node": frozenset({"core", "fetch", "cache"}),
    "agent": frozenset({"*"}),
}


def module_name(path: Path, root: Path) -> str:
    """``wasm_agent/fetch/oci.py`` -> ``wasm_agent.fetch.oci`` (packages without ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, name: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every ``(line, absolute module)`` imported anywhere in ``source`` (module ``name``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from wasm_agent import fetch`` imports the package
                if target == PACKAGE:
                    yield node.lineno, f"{PACKAGE}.{alias.name}"


def layer_of(module: str) -> str | None:
    """The layer (second name component) of a ``wasm_agent`` module, or None for others."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else ""


def violations(root: Path, allowed: dict[str, frozenset[str]]) -> list[str]:
    """Each import against the table, as ``path:line: layer imports module``."""
    found = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        name = module_name(path, root)
        where = path.relative_to(root)
        if path.parent == root / PACKAGE:  # wasm_agent/__init__.py, __main__.py: entry points
            continue
        layer = str(layer_of(name))
        if layer not in allowed:
            found.append(f"{where}:1: unknown layer {layer!r} (add a row to the table)")
            continue
        rules = allowed[layer]
        source = path.read_text()
        for line, target in imported_modules(source, name, path.name == "__init__.py"):
            target_layer = layer_of(target)
            if target_layer is None or target_layer == layer or "*" in rules:
                continue
            if target_layer not in rules:
                permitted = ", ".join(sorted(rules)) or "nothing of wasm_agent"
                found.append(f"{where}:{line}: {layer} imports {target} (allowed: {permitted})")
    return found


def test_every_import_follows_the_layer_table() -> None:
    assert violations(ROOT, ALLOWED) == []


def test_every_package_has_a_row() -> None:
    packages = {p.parent.name for p in (ROOT / PACKAGE).glob("*/__init__.py")}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_upward_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "wasm_agent/__init__.py": "",
            "wasm_agent/core/__init__.py": "",
            "wasm_agent/core/settings.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from wasm_agent.fetch.policy import Policy\n"
            ),
            "wasm_agent/fetch/__init__.py": "",
            "wasm_agent/fetch/policy.py": (
                "from wasm_agent.core import settings\n"  # allowed
                "def load():\n"
                "    from wasm_agent.agent import cli\n"  # lazy, still refused
                "    from ..cache import store\n"  # relative, resolved
            ),
            "wasm_agent/agent/__init__.py": "",
            "wasm_agent/agent/cli.py": "import wasm_agent.xds.proxy\nfrom wasm_agent import host\n",
        },
    )
    assert violations(tmp_path, ALLOWED) == [
        "wasm_agent/core/settings.py:3: core imports wasm_agent.fetch.policy"
        " (allowed: nothing of wasm_agent)",
        "wasm_agent/fetch/policy.py:3: fetch imports wasm_agent.agent (allowed: core)",
        "wasm_agent/fetch/policy.py:4: fetch imports wasm_agent.cache (allowed: core)",
    ]


def test_an_unknown_package_is_reported(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "wasm_agent/__init__.py": "",
            "wasm_agent/extra/__init__.py": "",
            "wasm_agent/extra/x.py": "from wasm_agent.core import errors\n",
        },
    )
    assert violations(tmp_path, ALLOWED) == [
        "wasm_agent/extra/__init__.py:1: unknown layer 'extra' (add a row to the table)",
        "wasm_agent/extra/x.py:1: unknown layer 'extra' (add a row to the table)",
    ]
