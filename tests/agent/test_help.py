"""Every command's ``--help``: each flag has help, the same flag has the same metavar and help
everywhere, defaults are shown, choices are written ``a|b``, and the exit rule is printed."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from wasm_agent.agent import cli
from wasm_agent.core import config
from wasm_agent.demo.envoy import EnvoyNotFound, find_envoy

COMMANDS = [name for name in cli.COMMANDS if cli._available(name)]


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {}
    for name in COMMANDS:
        parser = cli._command_parser(name, importlib.import_module(cli.COMMANDS[name][0]))
        parsers[name] = parser
        for action in parser._actions:  # cache's ls/verify/prune
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    parsers[f"{name} {sub}"] = subparser
    return parsers


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a for a in parser._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]  # fmt: skip


def test_every_flag_has_help_and_shows_a_default_it_has() -> None:
    for name, parser in _parsers().items():
        for action in _options(parser):
            flag = action.option_strings[-1]
            assert action.help, f"{name} {flag}: no help"
            assert "(default:" not in action.help, f"{name} {flag}: write (default X)"
            shown = action.default not in (None, False, [], "", argparse.SUPPRESS)
            if shown and not isinstance(action.default, frozenset | tuple):
                assert "default" in action.help, f"{name} {flag}: default hidden"
            assert not (action.choices and action.metavar is None), f"{name} {flag}: {{a,b}}"


def test_the_same_flag_reads_the_same_everywhere() -> None:
    seen: dict[str, tuple[str, object, str]] = {}
    same_help = {"--pull-secret", "--insecure-registry", "--cache-dir", "--verify-policy",
                 "--timeout", "--filename", "--log-level", "--log-format", "--sha256"}  # fmt: skip
    for name, parser in _parsers().items():
        for action in _options(parser):
            flag = action.option_strings[-1]
            if name.startswith(("demo", "cache")) and flag == "--timeout":
                continue  # demo's is a step deadline, not a fetch deadline
            if flag not in seen:
                seen[flag] = (name, action.metavar, action.help or "")
                continue
            first, metavar, help_text = seen[flag]
            assert action.metavar == metavar, (
                f"{flag}: {first} {metavar} != {name} {action.metavar}"
            )
            if flag in same_help and not name.startswith("node"):  # the node cache is another
                stem = help_text.split(" (one ")[0]
                assert (action.help or "").split(" (one ")[0] == stem, f"{flag}: {first} vs {name}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_the_exit_rule(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wasm_agent", command, "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0
    assert " ".join(result.stdout.split()).endswith(" ".join(cli.EXIT_RULE.split()))


def test_fetch_failure_shows_its_default() -> None:
    option = next(o for o in config.PROXY if o.flag == "--fetch-failure")
    assert "(default nack)" in option.help


def test_envoy_is_a_row_of_the_table_and_read_through_it(tmp_path: Path) -> None:
    assert config.ENVOY.flag == "--envoy" and config.ENVOY.env == "WASM_AGENT_ENVOY"
    assert config.ENVOY in config.ALL
    envoy = tmp_path / "envoy"
    envoy.write_text("#!/bin/sh\n")
    envoy.chmod(0o755)
    empty = {"PATH": str(tmp_path / "none")}
    python = str(tmp_path / "py" / "python")
    assert find_envoy(environ={**empty, "WASM_AGENT_ENVOY": str(envoy)}, python=python) == str(
        envoy
    )
    with pytest.raises(EnvoyNotFound, match="looked for"):  # blank counts as unset
        find_envoy(environ={**empty, "WASM_AGENT_ENVOY": "  "}, python=python)
