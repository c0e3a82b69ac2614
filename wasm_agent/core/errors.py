"""The root of wasm-agent's exceptions (the tree is drawn in ``docs/design.md``).

Every error a library package raises on purpose derives from :class:`WasmAgentError`, so a
caller can catch "anything wasm-agent refused" in one clause and let programming errors through.
"""

from __future__ import annotations


class WasmAgentError(Exception):
    """Base class of every error wasm-agent raises on purpose."""


class UsageError(WasmAgentError):
    """The command line, a variable or an input file is unusable; the CLI exits 2."""


class SettingsError(UsageError, ValueError):
    """A setting has a value that cannot be used; the message names the setting."""
