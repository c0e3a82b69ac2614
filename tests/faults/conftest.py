"""Fixtures of the fault-injection suite: real servers on 127.0.0.1, agents stopped at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.echo import EchoServer
from tests.support.faults import Agent, FakeEnvoy, short_dir
from tests.support.istiod import FakeIstiod
from tests.support.modserver import ModServer
from wasm_agent.xds.types import ECDS_TYPE


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory under /tmp (for the agent's Unix socket), removed afterwards."""
    with short_dir() as path:
        yield path


@pytest.fixture
def mods() -> Iterator[ModServer]:
    with ModServer() as server:
        yield server


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod() as server:
        yield server


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def make_agent(workdir: Path, istiod: FakeIstiod) -> Iterator[Callable[..., Agent]]:
    """``make_agent(*flags, env=..., cache_dir=...)``: a started ``wasm-agent proxy`` process
    (plaintext to the fake istiod); every one is stopped at teardown."""
    agents: list[Agent] = []

    def make(*flags: str, env: dict[str, str] | None = None, cache_dir: Path | None = None,
             start: bool = True) -> Agent:  # fmt: skip
        agent = Agent(workdir, istiod.address, "--plaintext", *flags, env=env, cache_dir=cache_dir)
        agents.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in agents:
        agent.stop()


@pytest.fixture
def fake_envoy(
    workdir: Path, istiod: FakeIstiod, make_agent: Callable[..., Agent]
) -> Iterator[Callable[[], FakeEnvoy]]:
    """``fake_envoy()``: an Envoy-like ADS client on the agent's socket, returned once its
    ECDS subscription has reached istiod; stopped at teardown."""
    clients: list[FakeEnvoy] = []

    def make() -> FakeEnvoy:
        logs = Agent(workdir, istiod.address).logs  # the agents' shared log file
        client = FakeEnvoy(workdir / "xds.sock", logs=logs).start()
        clients.append(client)
        istiod.wait_for(
            lambda: [s for s in istiod.open_streams() if ECDS_TYPE in s.subscribed],
            60,
            "ECDS subscription",
        )
        return client

    yield make
    for client in clients:
        client.stop()
