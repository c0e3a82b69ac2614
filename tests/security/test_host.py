"""Hostile plugins in the reference host, through ``wasm-agent run`` and ``wasm-agent check``
as real processes.

Each plugin misbehaves in a callback Envoy would call: an infinite loop, growing memory towards
4 GiB, out-of-bounds pointers (handed to the host and dereferenced by the plugin), unbounded
recursion; at VM start and per request. Must hold: the process ends by itself well within the
timeout (no hang), with no Python traceback and no signal death, its peak RSS stays under
:data:`RSS_LIMIT_MB`, and the output names what went wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.host.wat import BASIC, plugin
from tests.security.evil import run_measured

RSS_LIMIT_MB = 600.0

LOOP = "(loop $l (br $l))"
GROW = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))"
OOB_HOST = "(call $st (call $proxy_log (i32.const 2) (i32.const -16) (i32.const 4096)))"
OOB_LOAD = "(drop (i32.load (i32.const -4)))"
RECURSE = "(drop (call $deep (i32.const 0)))"

BODIES = {"loop": LOOP, "grow-4GiB": GROW, "oob-host-call": OOB_HOST, "oob-load": OOB_LOAD,
          "recursion": RECURSE}  # fmt: skip
# (the plugin fails, what the output must say): a runaway loop, an out-of-bounds load and a
# stack overflow stop the plugin; growing memory stops at the host's memory limit (memory.grow
# returns -1, the plugin goes on); a host call with an out-of-bounds pointer returns
# InvalidMemoryAccess (6, logged by the plugin) instead of reading outside the sandbox
EXPECT: dict[str, tuple[bool, tuple[str, ...]]] = {
    # fuel or the epoch deadline, whichever runs out first on a loaded machine
    "loop": (True, ("all fuel consumed", "deadline")),
    "grow-4GiB": (False, ("",)),
    "oob-host-call": (False, ("6",)),
    "oob-load": (True, ("memory access out of bounds",)),
    "recursion": (True, ("Maximum call stack size exceeded",)),
}
SPEC = """cases:
  - name: one request
    expect: {response: {status: 200}}
"""
DEEP = """
  (func $deep (param i32) (result i32)
    (i32.add (call $deep (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
"""


def hostile(where: str, what: str) -> bytes:
    """A plugin doing ``what`` in ``proxy_on_vm_start`` or ``proxy_on_request_headers``."""
    action = BODIES[what]
    if where == "vm_start":
        body = f"""
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) {action} (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
"""
    else:
        body = (
            BASIC
            + f"""
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {action} (i32.const 0))
"""
        )
    return plugin(body + DEEP)


CASES = [(where, what) for where in ("vm_start", "request") for what in BODIES]


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize(("where", "what"), CASES, ids=[f"{w}-{x}" for w, x in CASES])
def test_hostile_plugin(tmp_path: Path, command: str, where: str, what: str) -> None:
    path = tmp_path / f"{what}.wasm"
    path.write_bytes(hostile(where, what))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    extra = ["--spec", str(spec)] if command == "check" else []
    result = run_measured([command, str(path), *extra], timeout=90)
    output = result.stdout + result.stderr
    print(f"{command} {where}/{what}: exit {result.returncode}, "
          f"peak RSS {result.peak_rss_mb:.0f} MB, {result.seconds:.1f} s")  # fmt: skip
    assert "Traceback" not in output, output[-3000:]
    assert result.seconds < 60, result.seconds
    assert result.peak_rss_mb < RSS_LIMIT_MB, result.peak_rss_mb
    fails, words = EXPECT[what]
    assert any(word in output for word in words), output[-2000:]
    # the CI gate fails exactly the modules that misbehave; a plugin that cannot start fails
    # the command
    if command == "check" or where == "vm_start":
        assert result.returncode == (1 if fails else 0), output[-2000:]
    else:  # a request the plugin failed on is reported (503, or no response as Envoy would)
        assert result.returncode in (0, 1), output[-2000:]
