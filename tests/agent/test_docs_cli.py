"""``docs/cli.md`` names every flag of every command and every variable of the table."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from wasm_agent.agent import cli
from wasm_agent.core import config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()


def test_every_flag_of_the_documented_commands_is_listed() -> None:
    for name in ("prefetch", "proxy", "check", "run", "cache", "demo"):
        parser = cli._command_parser(name, importlib.import_module(cli.COMMANDS[name][0]))
        parsers = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
        for each in parsers:
            for action in each._actions:
                for flag in action.option_strings:
                    if flag not in ("-h", "--help"):
                        assert f"`{flag}" in DOC or f", {flag}" in DOC, f"{name} {flag}"


def test_every_variable_with_a_flag_is_listed() -> None:
    for option in config.ALL:
        if option.flag:
            assert f"`{option.env}`" in DOC, option.env
