"""The module request protocol on a pod's ``node.sock``: one JSON object per line each way.

Request::

    {"url": "oci://registry/repo:tag", "sha256": "<hex>" | null,
     "pull_policy": "IfNotPresent" | "Always" | "", "pull_secret": "<base64 of the raw
     .dockerconfigjson>" | null, "timeout": <seconds> | null,
     "resource_name": "...", "resource_version": "..."}

Answer: ``{"ok": true, "path": "modules/<sha256>.wasm", "sha256": ..., "size": ...,
"hit": ...}`` (``path`` relative to the view, i.e. to the directory holding ``node.sock``) or
``{"ok": false, "reason": "denied" | "fetch_failed" | "bad_request" | "unavailable",
"result": <wasm_remote_fetch_count label>, "error": "<message>"}``. A connection may carry
several requests, answered in order.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from wasm_agent.cache.model import ModuleRequest
from wasm_agent.cache.policy import PullPolicy

MAX_LINE = 1024 * 1024  # a request (with its pull secret) or an answer
MAX_TIMEOUT = 600.0


class BadRequest(ValueError):
    """A request line that does not follow the protocol; the message says what is wrong."""


def encode_request(request: ModuleRequest) -> bytes:
    """One request line for ``request``."""
    secret = request.pull_secret
    body = {
        "url": request.url,
        "sha256": request.sha256,
        "pull_policy": ""
        if request.pull_policy is PullPolicy.UNSPECIFIED
        else request.pull_policy.value,
        "pull_secret": None if secret is None else base64.b64encode(secret).decode(),
        "timeout": request.timeout,
        "resource_name": request.resource_name,
        "resource_version": request.resource_version,
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _text(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{key!r} is required")
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string")
    return value


def decode_request(line: bytes) -> ModuleRequest:
    """Parse one request line; :class:`BadRequest` says what is wrong (never the secret)."""
    try:
        body = json.loads(line)
    except (ValueError, RecursionError):
        raise BadRequest("not a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("not a JSON object")
    secret_text = body.get("pull_secret")
    secret: bytes | None = None
    if secret_text is not None:
        if not isinstance(secret_text, str):
            raise BadRequest("'pull_secret' must be a base64 string")
        try:
            secret = base64.b64decode(secret_text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("'pull_secret' is not valid base64") from None
    timeout = body.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise BadRequest(f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    try:
        policy = PullPolicy.parse(_text(body, "pull_policy"))
    except ValueError as error:
        raise BadRequest(str(error)) from None
    return ModuleRequest(
        url=_text(body, "url", required=True),
        sha256=_text(body, "sha256") or None,
        pull_policy=policy,
        resource_version=_text(body, "resource_version"),
        pull_secret=secret,
        timeout=float(timeout) if timeout is not None else None,
        resource_name=_text(body, "resource_name"),
    )


@dataclass(frozen=True)
class Answer:
    """What the node service answers one request."""

    ok: bool
    path: str = ""
    sha256: str = ""
    size: int = 0
    hit: bool = False
    reason: str = ""
    result: str = ""
    error: str = ""

    def encode(self) -> bytes:
        if self.ok:
            body: dict[str, Any] = {
                "ok": True,
                "path": self.path,
                "sha256": self.sha256,
                "size": self.size,
                "hit": self.hit,
            }
        else:
            body = {"ok": False, "reason": self.reason, "result": self.result, "error": self.error}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_answer(line: bytes) -> Answer:
    """Parse one answer line (:class:`BadRequest` if it is not one)."""
    try:
        body = json.loads(line)
    except (ValueError, RecursionError):
        raise BadRequest("the node service answered something that is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise BadRequest("the node service answered an object without 'ok'")
    if body["ok"]:
        path, sha, size = body.get("path"), body.get("sha256"), body.get("size")
        if not isinstance(path, str) or not isinstance(sha, str) or not isinstance(size, int):
            raise BadRequest("the node service's answer lacks path, sha256 or size")
        if path.startswith("/") or ".." in path.split("/"):
            raise BadRequest(f"the node service answered a path outside the view: {path!r}")
        return Answer(ok=True, path=path, sha256=sha, size=size, hit=bool(body.get("hit")))
    return Answer(
        ok=False,
        reason=str(body.get("reason", "")),
        result=str(body.get("result", "fetch_failure")),
        error=str(body.get("error", "")),
    )
