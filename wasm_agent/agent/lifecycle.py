"""Process lifecycle: wait for SIGTERM/SIGINT, then drain within a deadline."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

DRAIN_DEADLINE = 5.0


async def wait_for_signal(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Return the number of the first of ``signals`` the process receives."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def handler(number: int) -> None:
        if not received.done():
            received.set_result(number)

    for number in signals:
        loop.add_signal_handler(number, handler, number)
    try:
        return await received
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


async def drain(
    steps: list[Callable[[], Awaitable[None]]], deadline: float = DRAIN_DEADLINE
) -> bool:
    """Run shutdown ``steps`` in order within ``deadline`` seconds; False if time ran out."""

    async def run_all() -> None:
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("shutdown step failed")

    try:
        await asyncio.wait_for(run_all(), deadline)
        return True
    except TimeoutError:
        log.warning("drain deadline passed", extra={"deadline_s": deadline})
        return False
