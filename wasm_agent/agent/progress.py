"""Download progress on stderr: one bar per download on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from wasm_agent.fetch.model import Progress

BAR_WIDTH = 24
REDRAW_INTERVAL = 0.1


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class ProgressDisplay:
    """Hands out a :data:`Progress` callback per download and renders them all."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._rows: list[list] = []  # [label, received, total, done]
        self._drawn = 0
        self._last_draw = 0.0

    def callback(self, label: str) -> Progress:
        """A callback for one download labelled ``label`` (a redacted URL)."""
        row: list = [label, 0, None, False]
        self._rows.append(row)

        def report(received: int, total: int | None) -> None:
            first = row[1] == 0 and not row[3]
            row[1], row[2] = received, total
            if self.tty:
                self._redraw()
            elif first:
                size = f" ({_size(total)})" if total else ""
                self.stream.write(f"downloading {label}{size}\n")
                self.stream.flush()

        return report

    def finish(self, label: str, message: str) -> None:
        """Mark a download finished (``message``: "done", "failed", ...)."""
        for row in self._rows:
            if row[0] == label and not row[3]:
                row[3] = message
        if self.tty:
            self._redraw(force=True)

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL:
            return
        self._last_draw = now
        out = [f"\x1b[{self._drawn}A"] if self._drawn else []
        for label, received, total, done in self._rows:
            if total:
                filled = int(BAR_WIDTH * min(received, total) / total)
                bar = "#" * filled + "-" * (BAR_WIDTH - filled)
                amount = f"{_size(received)}/{_size(total)}"
            else:
                bar, amount = "?" * 0 + "." * BAR_WIDTH, _size(received)
            state = f" {done}" if done else ""
            out.append(f"\r\x1b[2K[{bar}] {amount:>21} {label}{state}\n")
        self._drawn = len(self._rows)
        self.stream.write("".join(out))
        self.stream.flush()
