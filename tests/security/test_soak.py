"""Soak: a new ECDS version every 50 ms alternating two cached modules, against
``wasm-agent proxy`` (a real process) and an Envoy-like client that ACKs every response.

Duration: ``WASM_AGENT_SOAK_SECONDS`` (default 30; the full run recorded in docs/security.md
is 180). RSS and open file descriptors of the agent are sampled every
``WASM_AGENT_SOAK_SAMPLE`` seconds (default 10; fewer for short runs). Must hold: every
response names one of the two modules with the right content, the agent stays ready, and
neither RSS nor fds show a growth trend after warm-up (least-squares slope over the run times
the duration under 8 MB and 2 fds; last sample within 8 MB / 2 fds of the first).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.faults import Agent, FakeEnvoy, assert_never_forwarded, extension, push
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from tests.support.plugins_wat import header_plugin
from tests.support.wasm import sha256_hex

DURATION = float(os.environ.get("WASM_AGENT_SOAK_SECONDS", "30"))
SAMPLE = float(os.environ.get("WASM_AGENT_SOAK_SAMPLE", str(min(10.0, DURATION / 6))))
PERIOD = 0.05
RSS_SLACK_MB = 8.0
FD_SLACK = 2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(DURATION + 240)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(values: list[float], times: list[float]) -> float:
    """Least-squares slope (units per second)."""
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    num = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True))
    den = sum((t - mean_t) ** 2 for t in times) or 1.0
    return num / den


def test_ecds_every_50ms_alternating_two_modules(
    make_agent: Callable[..., Agent],
    fake_envoy: Callable[[], FakeEnvoy],
    istiod: FakeIstiod,
    mods: ModServer,
) -> None:
    one, two = header_plugin("soak-1"), header_plugin("soak-2")
    urls = [mods.serve("/one.wasm", one), mods.serve("/two.wasm", two)]
    shas = [sha256_hex(one), sha256_hex(two)]
    agent = make_agent()
    assert agent.process is not None
    pid = agent.process.pid
    envoy = fake_envoy()
    for index in (0, 1):  # both cached before the clock starts
        push(istiod, extension(urls[index], shas[index]), f"warm{index}")
        envoy.wait_version(f"warm{index}")
    samples: list[tuple[float, float, int]] = []
    started = time.monotonic()
    next_sample = started + SAMPLE  # the first sample after one period of warm-up
    version = 0
    while (now := time.monotonic()) - started < DURATION:
        version += 1
        index = version % 2
        push(istiod, extension(urls[index], shas[index]), f"s{version}")
        if now >= next_sample:
            samples.append((now - started, rss_mb(pid), fds(pid)))
            next_sample += SAMPLE
        time.sleep(max(0.0, started + version * PERIOD - time.monotonic()))
    envoy.wait_version(f"s{version}", timeout=60)
    samples.append((time.monotonic() - started, rss_mb(pid), fds(pid)))
    received = len([v for v in envoy.versions() if v.startswith("s")])
    assert_never_forwarded(envoy, allowed=set(shas))
    assert agent.serving(), agent.logs()
    assert mods.count("/one.wasm") == 1 and mods.count("/two.wasm") == 1
    times = [t for t, _, _ in samples]
    rss = [r for _, r, _ in samples]
    open_fds = [float(f) for _, _, f in samples]
    rss_trend = slope(rss, times) * DURATION
    fd_trend = slope(open_fds, times) * DURATION
    print(
        f"soak {DURATION:.0f} s: {version} versions pushed, {received} received by Envoy; "
        f"RSS MB {[round(r, 1) for r in rss]}; fds {[int(f) for f in open_fds]}; "
        f"trend over the run: RSS {rss_trend:+.1f} MB, fds {fd_trend:+.1f}"
    )
    assert len(samples) >= 3
    assert received > 0
    assert rss_trend < RSS_SLACK_MB and rss[-1] - rss[0] < RSS_SLACK_MB, rss
    assert fd_trend < FD_SLACK and open_fds[-1] - open_fds[0] <= FD_SLACK, open_fds
