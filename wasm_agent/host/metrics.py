"""Plugin-defined metrics (counter, gauge, histogram) with Envoy's id scheme and rules.

Ids carry the type in the low two bits (counter 0, gauge 1, histogram 2) and advance by 4 before
use, as in cpp-host (first counter 4, first gauge 5, first histogram 6; checked against Envoy
1.40). Counters refuse negative increments; histograms cannot
be read back (BAD_ARGUMENT), like Envoy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wasm_agent.host.abi import MetricType, Status
from wasm_agent.host.hostfn import Current, host

_MASK = 0x3
_STEP = 4


@dataclass
class Metric:
    type: MetricType
    name: str
    value: int = 0
    samples: list[int] = field(default_factory=list)


class Metrics:
    """Metrics of one VM, by name and by id; values live in ``store`` (Envoy's stats store:
    every VM defining the same name and type shares one value, recorded from Envoy 1.40: a
    counter incremented by 3 in each VM's on_configure read 3, 6, 9)."""

    def __init__(self, store: dict[tuple[MetricType, str], Metric] | None = None) -> None:
        self.store = store if store is not None else {}
        self.by_name: dict[str, Metric] = {}
        self.by_id: dict[int, Metric] = {}
        self._next = {t: int(t) for t in MetricType}

    def define(self, type_: int, name: str) -> tuple[Status, int]:
        if type_ > MetricType.HISTOGRAM:
            return Status.BAD_ARGUMENT, 0
        mtype = MetricType(type_)
        metric = self.by_name.get(name)
        if metric is None or metric.type != mtype:
            metric = self.store.setdefault((mtype, name), Metric(mtype, name))
            self.by_name[name] = metric
        self._next[mtype] += _STEP
        mid = self._next[mtype]
        self.by_id[mid] = metric
        return Status.OK, mid

    def increment(self, mid: int, offset: int) -> Status:
        metric = self.by_id.get(mid)
        if metric is None:
            return Status.NOT_FOUND if (mid & _MASK) <= MetricType.GAUGE else Status.BAD_ARGUMENT
        if metric.type == MetricType.COUNTER:
            if offset <= 0:
                return Status.BAD_ARGUMENT
            metric.value += offset
            return Status.OK
        if metric.type == MetricType.GAUGE:
            metric.value += offset
            return Status.OK
        return Status.BAD_ARGUMENT

    def record(self, mid: int, value: int) -> Status:
        metric = self.by_id.get(mid)
        if metric is None:
            return Status.NOT_FOUND
        if metric.type == MetricType.COUNTER:
            metric.value += value
        elif metric.type == MetricType.GAUGE:
            metric.value = value
        else:
            metric.samples.append(value)
        return Status.OK

    def get(self, mid: int) -> tuple[Status, int]:
        if mid & _MASK > MetricType.GAUGE:
            return Status.BAD_ARGUMENT, 0  # histograms (and unknown types) cannot be read
        metric = self.by_id.get(mid)
        if metric is None:
            return Status.NOT_FOUND, 0
        return Status.OK, metric.value

    def snapshot(self) -> dict[str, int | list[int]]:
        """``name -> value`` (histograms: the recorded samples)."""
        return {
            m.name: (list(m.samples) if m.type == MetricType.HISTOGRAM else m.value)
            for m in self.by_name.values()
        }


@host("proxy_define_metric", "iiii")
def define_metric(mtype: int, name_ptr: int, name_size: int, id_p: int) -> int:
    vm = Current.vm
    name = vm.memory.read(name_ptr, name_size)
    if name is None:
        return Status.INVALID_MEMORY_ACCESS
    status, mid = vm.metrics.define(mtype & 0xFFFFFFFF, name.decode("utf-8", "replace"))
    if status != Status.OK:
        return status
    return Status.OK if vm.memory.set_u32(id_p, mid) else Status.INVALID_MEMORY_ACCESS


@host("proxy_increment_metric", "iI")
def increment_metric(mid: int, offset: int) -> int:
    return Current.vm.metrics.increment(mid & 0xFFFFFFFF, offset)


@host("proxy_record_metric", "iI")
def record_metric(mid: int, value: int) -> int:
    return Current.vm.metrics.record(mid & 0xFFFFFFFF, value & 0xFFFFFFFFFFFFFFFF)


@host("proxy_get_metric", "ii")
def get_metric(mid: int, result_p: int) -> int:
    vm = Current.vm
    status, value = vm.metrics.get(mid & 0xFFFFFFFF)
    if status != Status.OK:
        return status
    return Status.OK if vm.memory.set_u64(result_p, value) else Status.INVALID_MEMORY_ACCESS
