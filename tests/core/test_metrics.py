"""The metrics registry exports unlabelled metrics as 0 before their first event."""

from __future__ import annotations

from wasm_agent.core.metrics import Registry


def test_unlabelled_counter_gauge_histogram_are_zero_before_any_event() -> None:
    registry = Registry()
    registry.counter("things_total", "things")
    registry.gauge("level", "level")
    registry.histogram("seconds", "time", buckets=(0.1, 1.0))
    labelled = registry.counter("labelled_total", "per result", labels=("result",))
    text = registry.render()
    assert "istio_agent_things_total 0\n" in text
    assert "istio_agent_level 0\n" in text
    assert 'istio_agent_seconds_bucket{le="+Inf"} 0\n' in text
    assert "istio_agent_seconds_count 0\n" in text
    assert "istio_agent_labelled_total{" not in text  # label values are unknown until used
    labelled.inc(result="ok")
    assert 'istio_agent_labelled_total{result="ok"} 1\n' in registry.render()


def test_first_event_replaces_the_zero() -> None:
    registry = Registry()
    counter = registry.counter("things_total", "things")
    counter.inc()
    counter.inc()
    text = registry.render()
    assert "istio_agent_things_total 2\n" in text
    assert "istio_agent_things_total 0\n" not in text
    assert counter.value() == 2
