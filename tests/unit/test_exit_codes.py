"""The exit-code table is the one place codes are given: every domain error's code is in it, the tick's
codes are the plan's, and `--help` shows every code."""

from __future__ import annotations

import click
from click.testing import CliRunner

from protea_supervisor import errors, exitcodes
from protea_supervisor.cli.deploy import tick_cmd
from protea_supervisor.cli.main import cli
from protea_supervisor.deploy import plan
from protea_supervisor.hosts.declared import DeclarationUnavailable


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def test_codes_are_unique_and_every_error_takes_its_code_from_the_table() -> None:
    commands = [c.code for c in exitcodes.COMMANDS]
    assert len(commands) == len(set(commands))
    assert len({c.code for c in exitcodes.TICK}) == len(exitcodes.TICK)
    for error in _subclasses(errors.ProteaError):
        assert error.exit_code in commands, error.__name__
    assert DeclarationUnavailable.exit_code == exitcodes.POSTGRES_UNAVAILABLE


def test_the_ticks_codes_are_the_plans() -> None:
    assert {c.code for c in exitcodes.TICK} == set(plan.MEANING)


def test_help_shows_every_code() -> None:
    shown = CliRunner().invoke(cli, ["--help"]).output
    for code in exitcodes.COMMANDS:
        assert f"{code.code:<3} {code.short}" in shown
    tick = tick_cmd.get_help(click.Context(tick_cmd, info_name="tick"))
    for code in exitcodes.TICK:
        assert f"{code.code:<3} {code.short}" in tick
