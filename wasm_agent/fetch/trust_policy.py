"""The verify policy: which OCI repositories need a cosign signature, by which keys or identities.

Pure (no network). A policy file is YAML (details and an example in ``docs/signing.md``)::

    trustedRoot: sigstore/trusted_root.json  # for keyless entries (relative to this file)
    rules:
      - repository: ghcr.io/acme/**        # registry/repository glob
        keys: [keys/acme.pub]              # PEM files (relative to this file) or inline PEM
        keyless:                           # and/or Fulcio identities (cosign keyless)
          - identity: https://github.com/acme/f/.github/workflows/release.yml@refs/heads/main
            issuer: https://token.actions.githubusercontent.com
      - repository: "**"
        keys: none                         # no signature required

Rules are tried in order and the first whose glob matches ``registry/repository`` wins. A
repository that matches no rule is refused (fail closed): end with a ``"**"`` rule to choose
the default. Globs: ``*`` and ``?`` stay within one path segment, ``**`` crosses ``/``.
Keys are ECDSA P-256 or Ed25519 public keys (``cosign generate-key-pair`` writes the former).
Every error names ``file:line``; unknown keys are errors.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.core.settings import (
    FetchSettings,
    SettingsError,
    build_fetch_settings,
    verify_policy_path,
)
from wasm_agent.fetch.keyless import KeylessIdentity
from wasm_agent.fetch.reference import DOCKER_HUB, DOCKER_HUB_ALIASES
from wasm_agent.fetch.trust_root import (
    TrustRoot,
    TrustRootError,
    load_trust_root,
    verify_signature,
)

NONE = "none"
RULE_KEYS = frozenset({"repository", "keys", "keyless"})
TOP_KEYS = frozenset({"rules", "trustedRoot"})
KEYLESS_KEYS = frozenset({"identity", "identityRegExp", "issuer", "issuerRegExp", "trustedRoot"})
MAX_POLICY_SIZE = 1024 * 1024


class PolicyError(WasmAgentError, ValueError):
    """The policy file cannot be used; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key; ``fingerprint`` is the sha256 hex of its SubjectPublicKeyInfo."""

    fingerprint: str
    algorithm: str  # "ecdsa-p256" or "ed25519"
    origin: str  # file:line of the policy entry (and the key file, if any)
    key: Any = field(compare=False, hash=False, repr=False)

    def verify(self, signature: bytes, payload: bytes) -> bool:
        """True if ``signature`` (DER ECDSA-SHA256 or raw Ed25519) signs ``payload``."""
        return verify_signature(self.key, signature, payload)


@dataclass(frozen=True)
class Rule:
    """One policy entry: a glob, the keys of which one must have signed (None: no need), and
    the keyless identities (any one of a key or an identity passes)."""

    pattern: str
    keys: tuple[PublicKey, ...] | None
    origin: str  # file:line
    keyless: tuple[KeylessIdentity, ...] = ()

    @property
    def required(self) -> bool:
        return self.keys is not None or bool(self.keyless)

    @property
    def fingerprints(self) -> frozenset[str]:
        """What may have verified a cached module: key fingerprints, ``keyless:`` entries."""
        return frozenset(k.fingerprint for k in self.keys or ()) | frozenset(
            e.fingerprint for e in self.keyless
        )

    def matches(self, name: str) -> bool:
        return _glob_regex(self.pattern).fullmatch(name) is not None


@dataclass(frozen=True)
class TrustPolicy:
    """Ordered rules; the first rule matching a repository decides."""

    rules: tuple[Rule, ...]
    source: str = "<policy>"

    def rule_for(self, name: str) -> Rule | None:
        """The first rule matching ``name`` (``registry/repository``), else None (refused)."""
        name = normalize_name(name)
        for rule in self.rules:
            if rule.matches(name):
                return rule
        return None


def normalize_name(name: str) -> str:
    """``registry/repository`` with the registry lowercased and Docker Hub aliases folded."""
    registry, _, path = name.partition("/")
    registry = registry.lower()
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if path and "/" not in path and not any(c in path for c in "*?"):
            path = f"library/{path}"
    return f"{registry}/{path}" if path else registry


_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def _glob_regex(pattern: str) -> re.Pattern[str]:
    compiled = _GLOB_CACHE.get(pattern)
    if compiled is None:
        parts = re.split(r"(\*\*|\*|\?)", pattern)
        regex = "".join(
            ".*" if p == "**" else "[^/]*" if p == "*" else "[^/]" if p == "?" else re.escape(p)
            for p in parts
        )
        compiled = _GLOB_CACHE[pattern] = re.compile(regex)
    return compiled


# -- loading ----------------------------------------------------------------------------------


def load_policy(path: str | Path) -> TrustPolicy:
    """Read and validate a policy file; raises :class:`PolicyError` naming ``file:line``."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_POLICY_SIZE:
            raise PolicyError(f"{path}: larger than {MAX_POLICY_SIZE} bytes")
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise PolicyError(f"{path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    return parse_policy(text, str(path), base=path.parent)


def parse_policy(text: str, source: str = "<policy>", base: Path | None = None) -> TrustPolicy:
    """Validate policy YAML ``text``; key file paths are relative to ``base``."""

    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError(f"{source}:{line}: not valid YAML: {error.problem}") from None
    except yaml.YAMLError as error:
        raise PolicyError(f"{source}: not valid YAML: {error}") from None
    except RecursionError:
        raise PolicyError(f"{source}: YAML nested too deeply") from None
    documents = [d for d in documents if d is not None]
    if not documents:
        raise PolicyError(f"{source}:1: empty policy (expected a 'rules' list)")
    if len(documents) > 1:
        raise PolicyError(f"{_at(source, documents[1])}: one YAML document expected")
    loader = _Loader(source, base or Path.cwd())
    return TrustPolicy(rules=loader.top(documents[0]), source=source)


def _at(source: str, node: Any) -> str:
    return f"{source}:{node.start_mark.line + 1}"


class _Loader:
    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base
        self.roots: dict[Path, TrustRoot] = {}
        self.default_root: TrustRoot | None = None

    def error(self, node: Any, message: str) -> PolicyError:
        return PolicyError(f"{_at(self.source, node)}: {message}")

    def mapping(self, node: Any, what: str, allowed: frozenset[str]) -> dict[str, tuple[Any, Any]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping")
        found: dict[str, tuple[Any, Any]] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if not isinstance(name, str) or name not in allowed:
                shown = name if name is not None else "<non-scalar>"
                raise self.error(
                    key, f"unknown key {shown!r} in {what} (allowed: {', '.join(sorted(allowed))})"
                )
            if name in found:
                raise self.error(key, f"duplicate key {name!r} in {what}")
            found[name] = (key, value)
        return found

    def string(self, node: Any, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.error(node, f"{what} must be a string")
        return node.value

    def top(self, node: Any) -> tuple[Rule, ...]:
        fields = self.mapping(node, "the policy", TOP_KEYS)
        if "rules" not in fields:
            raise self.error(node, "missing 'rules' (a list of {repository, keys})")
        if "trustedRoot" in fields:
            self.default_root = self.trust_root(fields["trustedRoot"][1])
        key, rules = fields["rules"]
        if not isinstance(rules, yaml.SequenceNode) or not rules.value:
            raise self.error(rules if rules.value else key, "'rules' must be a non-empty list")
        return tuple(self.rule(item) for item in rules.value)

    def rule(self, node: Any) -> Rule:
        fields = self.mapping(node, "a rule", RULE_KEYS)
        if "repository" not in fields:
            raise self.error(node, "rule has no 'repository'")
        if "keys" not in fields and "keyless" not in fields:
            raise self.error(node, "rule has no 'keys' (or 'keyless')")
        pattern = self.pattern(fields["repository"][1])
        keys = self.keys(fields["keys"][1]) if "keys" in fields else ()
        keyless = self.keyless(fields["keyless"][1]) if "keyless" in fields else ()
        if keys is None and keyless:
            raise self.error(fields["keys"][1], "'keys: none' next to 'keyless': drop 'keys'")
        return Rule(pattern=pattern, keys=keys, origin=_at(self.source, node), keyless=keyless)

    # -- keyless ---------------------------------------------------------------------------

    def keyless(self, node: Any) -> tuple[KeylessIdentity, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.error(node, "'keyless' must be a non-empty list of {identity, issuer}")
        return tuple(self.identity(item) for item in node.value)

    def identity(self, node: Any) -> KeylessIdentity:
        fields = self.mapping(node, "a keyless entry", KEYLESS_KEYS)
        values: dict[str, str | None] = {}
        for exact, regexp in (("identity", "identityRegExp"), ("issuer", "issuerRegExp")):
            if exact in fields and regexp in fields:
                raise self.error(node, f"keyless entry has both '{exact}' and '{regexp}'")
            if exact not in fields and regexp not in fields:
                raise self.error(node, f"keyless entry has no '{exact}' or '{regexp}'")
            values[exact] = values[regexp] = None
            name = exact if exact in fields else regexp
            value_node = fields[name][1]
            text = self.string(value_node, f"'{name}'").strip()
            if not text:
                raise self.error(value_node, f"'{name}' is empty")
            if name == regexp:
                try:
                    re.compile(text)
                except re.error as error:
                    raise self.error(
                        value_node, f"'{name}' is not a regular expression: {error}"
                    ) from None
            values[name] = text
        if "trustedRoot" in fields:
            root = self.trust_root(fields["trustedRoot"][1])
        elif self.default_root is not None:
            root = self.default_root
        else:
            raise self.error(node, "keyless entry needs a trustedRoot (here or at the top level)")
        return KeylessIdentity(
            identity=values["identity"],
            identity_regexp=values["identityRegExp"],
            issuer=values["issuer"],
            issuer_regexp=values["issuerRegExp"],
            root=root,
            origin=_at(self.source, node),
        )

    def trust_root(self, node: Any) -> TrustRoot:
        text = self.string(node, "'trustedRoot' (a trusted_root.json path)")
        path = (self.base / Path(text.strip()).expanduser()).resolve()
        if path not in self.roots:
            if not path.is_file():
                raise self.error(node, f"cannot read trusted root {path}")
            try:
                self.roots[path] = load_trust_root(path)
            except TrustRootError as error:
                raise self.error(node, str(error)) from None
        return self.roots[path]

    def pattern(self, node: Any) -> str:
        text = self.string(node, "'repository'").strip()
        if not text:
            raise self.error(node, "'repository' is empty")
        if "://" in text:
            raise self.error(node, f"'repository' is registry/repository, not a URL: {text!r}")
        if any(c.isspace() for c in text) or "@" in text:
            raise self.error(node, f"'repository' has whitespace or a digest: {text!r}")
        last = text.rsplit("/", 1)[-1]
        if ":" in last and "/" in text:
            raise self.error(node, f"'repository' names a tag; use registry/repository: {text!r}")
        if "/" not in text and text != "**":
            raise self.error(
                node, f"'repository' must be registry/repository (or '**'), got {text!r}"
            )
        return normalize_name(text)

    def keys(self, node: Any) -> tuple[PublicKey, ...] | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            if node.value.strip().lower() == NONE:
                return None
            return (self.key(node),)
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "'keys' must be a list of PEM keys or key files, or 'none'")
        if not node.value:
            raise self.error(node, "'keys' is empty (write 'keys: none' to require no signature)")
        return tuple(self.key(item) for item in node.value)

    def key(self, node: Any) -> PublicKey:
        text = self.string(node, "a key (PEM text or a file path)")
        origin = _at(self.source, node)
        if text.lstrip().startswith("-----BEGIN"):
            return self.parse_key(node, text.encode(), origin)
        path = (self.base / Path(text.strip()).expanduser()).resolve()
        try:
            data = path.read_bytes()
        except OSError as error:
            raise self.error(node, f"cannot read key file {path}: {error.strerror}") from None
        return self.parse_key(node, data, f"{origin} ({path})")

    def parse_key(self, node: Any, pem: bytes, origin: str) -> PublicKey:
        try:
            key = serialization.load_pem_public_key(pem.strip() + b"\n")
        except (ValueError, TypeError) as error:
            reason = str(error).splitlines()[0] if str(error) else "unreadable"
            raise self.error(node, f"not a PEM public key ({reason})") from None
        except Exception:  # cryptography raises UnsupportedAlgorithm for unknown key types
            raise self.error(node, "unsupported public key type") from None
        if isinstance(key, ed25519.Ed25519PublicKey):
            algorithm = "ed25519"
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            algorithm = "ecdsa-p256"
        else:
            kind = type(key).__name__.removeprefix("_").replace("PublicKey", "")
            curve = getattr(getattr(key, "curve", None), "name", "")
            shown = f"{kind} {curve}".strip()
            raise self.error(
                node, f"unsupported key type {shown} (use ECDSA P-256 or Ed25519 public keys)"
            )
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return PublicKey(hashlib.sha256(spki).hexdigest(), algorithm, origin, key)


def load_verify_policy(path: str | Path) -> TrustPolicy:
    """Load a verify policy file (``--verify-policy``); :class:`SettingsError` names file:line."""
    try:
        return load_policy(path)
    except PolicyError as error:
        raise SettingsError(f"verify policy: {error}") from None


def fetch_settings_from_env(
    env: Mapping[str, str] | None = None, *, verify_policy: str | Path | None = None
) -> FetchSettings:
    """Build :class:`FetchSettings` from Istio's environment variables and the verify policy.

    ``verify_policy`` (the ``--verify-policy`` flag) wins over ``$WASM_AGENT_VERIFY_POLICY``.
    """
    env = os.environ if env is None else env
    path = verify_policy_path(env, verify_policy)
    policy = load_verify_policy(path) if path else None
    return build_fetch_settings(env, verify_policy=policy)
