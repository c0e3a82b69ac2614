"""Print each fuzz target's figures (inputs, time, RSS) at the end of the pytest run."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter) -> None:
    lines = []
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
        "failed", []
    ):
        if report.when != "call":
            continue
        for name, value in report.user_properties:
            if name == "fuzz_summary":
                lines.append(str(value))
    if lines:
        terminalreporter.section("fuzzing")
        for line in sorted(lines):
            terminalreporter.write_line(line)
