"""Time under the test's control: ``HostedPlugin.advance(seconds)``.

``advance`` moves the plugin's clocks (``proxy_get_current_time_nanoseconds``, the reload
back-off's monotonic clock) and fires, in time order, what would have happened meanwhile:
``proxy_on_tick`` on every live root context (Envoy ticks each worker's and main's VM) every
``tick_period_ms``, and the timeouts of pending HTTP callouts (Envoy's 504 "upstream request
timeout" reply) and gRPC calls (closed with DEADLINE_EXCEEDED, 4). Nothing else moves time:
callbacks take no time, and a callout's timeout counts from the time it was first seen here
(the start, or the end of the ``advance`` or exchange that made it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wasm_agent.host.callouts import deliver_grpc, deliver_http_response
from wasm_agent.host.maps import HeaderMap
from wasm_agent.host.startup import CALLOUT_TIMEOUT_BODY, CALLOUT_TIMEOUT_HEADERS

if TYPE_CHECKING:
    from wasm_agent.host.failure import Plugin
    from wasm_agent.host.vm import PluginVM

GRPC_DEADLINE_EXCEEDED = 4
MAX_EVENTS = 100_000


class VirtualTime:
    """An offset added to the given clocks, and the timers it fires."""

    def __init__(self, clock_ns: Callable[[], int], monotonic: Callable[[], float]) -> None:
        self.base_ns = clock_ns
        self.base_monotonic = monotonic
        self.offset = 0.0  # seconds advanced so far
        self._next_tick: dict[int, float] = {}
        self._started: dict[tuple[int, int], float] = {}

    def clock_ns(self) -> int:
        return self.base_ns() + int(self.offset * 1e9)

    def monotonic(self) -> float:
        return self.base_monotonic() + self.offset

    def observe(self, plugin: Plugin) -> None:
        """Note the start of callouts made since the last look (they start now)."""
        for vm in plugin.vms:
            for token in [*vm.callouts.http, *vm.callouts.grpc]:
                self._started.setdefault((id(vm), token), self.offset)

    def advance(self, plugin: Plugin, seconds: float) -> int:
        """Move time on by ``seconds``, firing due ticks and timeouts; returns how many fired."""
        if seconds < 0:
            raise ValueError(f"time only moves forward: advance({seconds})")
        self.observe(plugin)
        target = self.offset + seconds
        fired = 0
        while fired < MAX_EVENTS:
            due = self._next_event(plugin)
            if due is None or due[0] > target:
                break
            when, fire = due
            self.offset = max(self.offset, when)
            fire()
            fired += 1
            self.observe(plugin)
        self.offset = target
        return fired

    def _next_event(self, plugin: Plugin) -> tuple[float, Callable[[], None]] | None:
        events: list[tuple[float, int, Callable[[], None]]] = []
        for order, vm in enumerate(plugin.vms):
            if vm.failed or vm.hung:
                continue
            period = vm.root.tick_period_ms / 1000
            if period > 0:
                key = id(vm)
                when = self._next_tick.setdefault(key, self.offset + period)
                events.append((when, order, self._tick(vm, period)))
            else:
                self._next_tick.pop(id(vm), None)
            events += self._timeouts(vm, order)
        if not events:
            return None
        when, _, fire = min(events, key=lambda event: (event[0], event[1]))
        return when, fire

    def _tick(self, vm: PluginVM, period: float) -> Callable[[], None]:
        def fire() -> None:
            self._next_tick[id(vm)] = self.offset + period
            vm.call_cb("proxy_on_tick", vm.root, vm.root.id)

        return fire

    def _timeouts(self, vm: PluginVM, order: int) -> list[tuple[float, int, Callable[[], None]]]:
        out: list[tuple[float, int, Callable[[], None]]] = []
        for token, callout in vm.callouts.http.items():
            start = self._started.get((id(vm), token))
            if callout.answered or not callout.timeout_ms or start is None:
                continue

            def timeout(token: int = token) -> None:
                headers = HeaderMap.coerce(list(CALLOUT_TIMEOUT_HEADERS))
                deliver_http_response(vm, token, headers, CALLOUT_TIMEOUT_BODY, HeaderMap())

            out.append((start + callout.timeout_ms / 1000, order, timeout))
        for token, call in vm.callouts.grpc.items():
            start = self._started.get((id(vm), token))
            if call.done or call.cancelled or not call.timeout_ms or start is None:
                continue

            def deadline(token: int = token) -> None:
                deliver_grpc(vm, token, close=GRPC_DEADLINE_EXCEEDED)

            out.append((start + call.timeout_ms / 1000, order, deadline))
        return out
