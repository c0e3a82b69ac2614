"""Load failures and traps under each failure policy: real Envoy against the reference host.

Load failures: Envoy (static bootstrap) refuses the config and exits; the reason it logs
("Wasm VM failed <reason>", the missing import, the trapping start callback) must be the host's
``LoadError`` message. Traps: the ``trap`` plugin traps on requests with ``x-trap``; the same
sequence of requests (with the same pauses, on the host's injected clock) must give the same
statuses, headers and upstream hits under FAIL_CLOSED, FAIL_OPEN and FAIL_RELOAD.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.differential import HostSide, Request, assert_same, envoy_clock, start_host
from tests.support.envoy_wasm import EnvoyWasm, Observation, WasmFilter, start_failure
from tests.support.plugins import plugin
from wasm_agent.host.harness import LoadError

# --------------------------------------------------------------------------- load failures


@dataclass(frozen=True)
class LoadCase:
    module: str  # plugin name, or "garbage" for bytes that are not Wasm
    root_id: str
    reason: str  # Envoy's reason, as it logs it
    configuration: str | None = "x"
    failure_policy: str | None = None


LOAD_CASES = {
    "no_abi_version": LoadCase(
        "wat/no_abi_version", "x", "Missing or unknown Proxy-Wasm ABI version"
    ),
    "no_allocator": LoadCase("wat/no_allocator", "x", "Wasm module is missing malloc function."),
    "vm_start_false": LoadCase("wat/vm_start_false", "x", "Failed to start base Wasm"),
    "configure_false": LoadCase("wat/configure_false", "x", "Failed to configure base Wasm plugin"),
    "missing_import": LoadCase(
        "wat/missing_import",
        "x",
        "Failed to load Wasm module due to a missing import: env.proxy_get_log_level",
    ),
    "not_wasm": LoadCase("garbage", "x", "Failed to parse corrupted Wasm module"),
    # AssemblyScript SDK bug: an empty plugin configuration traps in onConfigure.
    "as_empty_configuration": LoadCase(
        "as/index",
        "as_headers",
        "Function: proxy_on_configure failed: Uncaught RuntimeError: memory access out of bounds",
        configuration="",
    ),
    "start_trap": LoadCase(
        "wat/start_trap", "x", "Function: _initialize failed: Uncaught RuntimeError: unreachable"
    ),
    "vm_start_trap": LoadCase(
        "wat/vm_start_trap",
        "x",
        "Function: proxy_on_vm_start failed: Uncaught RuntimeError: unreachable",
    ),
    "unknown_import": LoadCase(
        "wat/unknown_import",
        "x",
        "Failed to load Wasm module due to a missing import: env.proxy_does_not_exist",
    ),
    "bad_import_signature": LoadCase(
        "wat/bad_import_signature",
        "x",
        "Failed to load Wasm module due to an import type mismatch: env.proxy_log, "
        "want: i32 i32 -> i32, but host exports: i32 i32 i32 -> i32",
    ),
    "bad_allocator_signature": LoadCase(
        "wat/bad_allocator_signature",
        "x",
        "Bad function signature for: proxy_on_memory_allocate, want: i32 -> i32, "
        "but the module exports: i64 -> i64",
    ),
    # FAIL_OPEN does not cover load failures: Envoy still refuses the plugin.
    "fail_open_still_fails": LoadCase(
        "wat/no_abi_version",
        "x",
        "Missing or unknown Proxy-Wasm ABI version",
        failure_policy="FAIL_OPEN",
    ),
}

_REASON = re.compile(
    r"\[wasm\] \[[^\]]*\] (?:Wasm VM failed (?P<failed>.*)|(?P<other>Failed to load Wasm module "
    r"due to .*|Function: \w+ failed: .*|Bad function signature for: .*))$"
)
# Load cases where the host's message is known to differ from Envoy's (name -> reason).
LOAD_GAPS: dict[str, str] = {}


def envoy_reasons(log: str) -> list[str]:
    """Envoy's failure reasons in the order it logged them (first: the cause)."""
    reasons = []
    for line in log.splitlines():
        match = _REASON.search(line)
        if match:
            reasons.append(match["failed"] or match["other"])
    return reasons


def load_spec(name: str, case: LoadCase, tmp_path: Path) -> WasmFilter:
    if case.module == "garbage":
        module = tmp_path / "garbage.wasm"
        module.write_bytes(b"this is not a wasm module\n")
    else:
        module = plugin(case.module)
    return WasmFilter(
        name,
        module,
        case.root_id,
        configuration=case.configuration,
        failure_policy=case.failure_policy,
    )


@pytest.fixture(scope="module")
def envoy_load_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Envoy's log for each load case (one Envoy start each, ~0.5 s)."""
    specs = {}
    for name, case in LOAD_CASES.items():
        workdir = tmp_path_factory.mktemp(f"envoy-load-{name}")
        specs[name] = (load_spec(name, case, workdir), workdir)  # builds outside the clock
    with envoy_clock("load failures"), ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(start_failure, *args) for name, args in specs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(LOAD_CASES))
def test_envoy_load_failure(envoy_load_failures: dict[str, str], name: str) -> None:
    log = envoy_load_failures[name]
    reasons = envoy_reasons(log)
    assert reasons, log[-3000:]
    assert reasons[0] == LOAD_CASES[name].reason
    assert f"Unable to create Wasm plugin {name}" in log


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=LOAD_GAPS[name], strict=True))
        if name in LOAD_GAPS
        else name
        for name in LOAD_CASES
    ],
)
def test_host_load_failure_matches_envoy(
    envoy_load_failures: dict[str, str], name: str, tmp_path: Path
) -> None:
    with pytest.raises(LoadError) as raised:
        start_host(load_spec(name, LOAD_CASES[name], tmp_path))
    assert str(raised.value) == envoy_reasons(envoy_load_failures[name])[0]


# Odd modules both Envoy and the host accept.
LOAD_OK = {"no_memory": "wat/no_memory", "two_versions": "wat/two_versions"}


@pytest.fixture(scope="module")
def envoy_load_ok(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Observation]:
    specs = [WasmFilter(name, plugin(module), "x") for name, module in LOAD_OK.items()]
    workdir = tmp_path_factory.mktemp("envoy-load-ok")
    with envoy_clock("load failures"), EnvoyWasm(specs, workdir) as envoy:
        return {name: envoy.request(name, "/", settle=0.05) for name in LOAD_OK}


@pytest.mark.parametrize("name", list(LOAD_OK))
def test_odd_module_loads_in_both(envoy_load_ok: dict[str, Observation], name: str) -> None:
    assert envoy_load_ok[name].status == 200
    host = HostSide(WasmFilter(name, plugin(LOAD_OK[name]), "x"))
    assert_same([envoy_load_ok[name]], [host.request(Request("/"))])


# --------------------------------------------------------------------------- traps

TRAP = (("x-trap", "1"),)
BACKOFF = 1.6  # Envoy's reload backoff is 1 s with up to 1.5x jitter

TRAP_SEQUENCE = (
    Request("/t1", headers=TRAP, wait=BACKOFF),  # the first trap, well after the load
    Request("/t2"),
    Request("/t3", headers=TRAP),
    Request("/t4"),
    Request("/t5", wait=BACKOFF),
)
POLICIES = {"trap_closed": "FAIL_CLOSED", "trap_open": "FAIL_OPEN", "trap_reload": "FAIL_RELOAD"}
# Traps elsewhere than the request headers: (policy, requests).
OTHER_TRAPS = {
    "trap_response_closed": ("FAIL_CLOSED", (Request("/status/418"), Request("/after"))),
    "trap_response_open": ("FAIL_OPEN", (Request("/status/418"), Request("/after"))),
    "trap_body_closed": (
        "FAIL_CLOSED",
        (Request("/b", method="POST", body=b"trap it"), Request("/after")),
    ),
    "trap_body_open": (
        "FAIL_OPEN",
        (Request("/b", method="POST", body=b"trap it"), Request("/after")),
    ),
}


def trap_spec(name: str) -> WasmFilter:
    policy = POLICIES[name] if name in POLICIES else OTHER_TRAPS[name][0]
    return WasmFilter(name, plugin("c/trap"), "trap", failure_policy=policy)


class TrapHalf:
    def __init__(self, envoy: EnvoyWasm) -> None:
        self.envoy = envoy
        self.observed: dict[str, list[Observation]] = {}
        self.reloads: dict[str, int] = {}
        self.other: dict[str, list[Observation]] = {}

    def observe_other(self, name: str) -> list[Observation]:
        if name not in self.other:
            with envoy_clock("traps"):
                self.other[name] = [
                    self.envoy.request(
                        name, r.path, method=r.method, headers=r.headers, body=r.body, settle=0.1
                    )
                    for r in OTHER_TRAPS[name][1]
                ]
        return self.other[name]

    def observe(self, name: str) -> list[Observation]:
        """All policies share the pauses: after each pause every policy runs its requests up to
        the next pause back to back (so FAIL_RELOAD's "inside the backoff" stays well inside)."""
        if not self.observed:
            results: dict[str, list[Observation]] = {name: [] for name in POLICIES}
            segments: list[list[Request]] = []
            for request in TRAP_SEQUENCE:
                if request.wait or not segments:
                    segments.append([])
                segments[-1].append(request)
            with envoy_clock("traps"):
                for segment in segments:
                    time.sleep(segment[0].wait)
                    for policy in POLICIES:
                        results[policy] += [
                            self.envoy.request(policy, r.path, headers=r.headers, settle=0.05)
                            for r in segment
                        ]
                assert self.envoy.envoy is not None
                stats = self.envoy.envoy.stats("vm_reload_success")
            for policy in POLICIES:
                self.reloads[policy] = stats.get(f"wasm.{policy}.vm_reload_success", 0)
            self.observed = results
        return self.observed[name]


@pytest.fixture(scope="module")
def trap_half(tmp_path_factory: pytest.TempPathFactory) -> TrapHalf:
    specs = [trap_spec(name) for name in (*POLICIES, *OTHER_TRAPS)]
    with envoy_clock("traps"):
        envoy = EnvoyWasm(specs, tmp_path_factory.mktemp("envoy-traps")).__enter__()
    try:
        yield TrapHalf(envoy)
    finally:
        envoy.__exit__()


def summary(observations: list[Observation]) -> list[tuple[int, bool, str | None]]:
    """(status, reached the upstream, the plugin's response header) per request."""
    return [
        (o.status, o.upstream_headers is not None, dict(o.response_headers).get("x-trap-plugin"))
        for o in observations
    ]


EXPECTED = {
    # Every request after the trap gets 503; nothing reaches the upstream.
    "trap_closed": [(503, False, None)] * 5,
    # The trapping request gets 503, later ones skip the plugin (no header) and pass.
    "trap_open": [(503, False, None)] + [(200, True, None)] * 4,
    # A new VM for the next stream once the backoff since the last load passed: reloaded at
    # once after the first trap, 503 inside the backoff after the second, reloaded after it.
    "trap_reload": [
        (503, False, None),
        (200, True, "alive"),
        (503, False, None),
        (503, False, None),
        (200, True, "alive"),
    ],
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_envoy_trap_policy(trap_half: TrapHalf, name: str) -> None:
    observed = trap_half.observe(name)
    assert summary(observed) == EXPECTED[name]
    assert observed[0].logs == (("warning", "trap: trapping"),)
    unreachable = "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
    assert observed[0].trap == unreachable
    # FAIL_RELOAD's new VM traps again on the next x-trap request; the others never run it.
    assert observed[2].trap == (unreachable if name == "trap_reload" else None)
    expected_reloads = 2 if name == "trap_reload" else 0
    assert trap_half.reloads[name] == expected_reloads


@pytest.mark.parametrize("name", list(POLICIES))
def test_host_trap_policy_matches_envoy(trap_half: TrapHalf, name: str) -> None:
    envoy = trap_half.observe(name)
    host = HostSide(trap_spec(name))
    assert_same(envoy, [host.request(r) for r in TRAP_SEQUENCE])
    assert host.host.reloads == trap_half.reloads[name]


def test_envoy_traps_elsewhere(trap_half: TrapHalf) -> None:
    # A trap in the response headers: the upstream answered, the client gets a 503 instead.
    for name in ("trap_response_closed", "trap_response_open"):
        trapped, after = trap_half.observe_other(name)
        assert (trapped.status, trapped.local_reply) == (503, False), name
        assert trapped.trap == (
            "Function: proxy_on_response_headers failed: Uncaught RuntimeError: unreachable"
        )
        assert trapped.logs == (("warning", "trap: trapping in the response headers"),)
    # A trap in the request body: 503 before the upstream has the whole request.
    for name in ("trap_body_closed", "trap_body_open"):
        trapped, after = trap_half.observe_other(name)
        assert (trapped.status, trapped.local_reply) == (503, True), name
        assert trapped.trap == (
            "Function: proxy_on_request_body failed: Uncaught RuntimeError: unreachable"
        )
    # Afterwards: fail closed answers 503, fail open skips the plugin.
    for name, status in (
        ("trap_response_closed", 503),
        ("trap_response_open", 200),
        ("trap_body_closed", 503),
        ("trap_body_open", 200),
    ):
        after = trap_half.observe_other(name)[1]
        assert after.status == status, name
        assert "x-trap-plugin" not in dict(after.response_headers), name


@pytest.mark.parametrize("name", list(OTHER_TRAPS))
def test_host_traps_elsewhere_match_envoy(trap_half: TrapHalf, name: str) -> None:
    envoy = trap_half.observe_other(name)
    host = HostSide(trap_spec(name))
    assert_same(envoy, [host.request(r) for r in OTHER_TRAPS[name][1]])
