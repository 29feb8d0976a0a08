"""Docs cannot go stale: every command has help text and is in the README."""

from __future__ import annotations

from pathlib import Path

import typer.main
from typer.core import TyperOption as Option

from atlas.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _commands(group, prefix: str = "atlas"):
    if hasattr(group, "commands"):
        for name, sub in group.commands.items():
            yield from _commands(sub, f"{prefix} {name}")
    else:
        yield prefix, group


def test_every_command_has_help_and_is_documented():
    root = typer.main.get_command(app)
    commands = list(_commands(root))
    assert len(commands) >= 6
    for name, command in commands:
        assert (command.help or "").strip(), f"{name} has no help"
        assert f"`{name}" in README, f"{name} is not documented in README.md"
        for param in command.params:
            if isinstance(param, Option) and not param.hidden:
                assert (param.help or "").strip(), f"{name} {param.opts} has no help"
                long = [o for o in param.opts if o.startswith("--") and o != "--help"]
                if long:
                    assert any(o in README for o in long), f"{name} {long} not in README.md"
