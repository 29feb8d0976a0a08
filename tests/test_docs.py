"""Docs cannot go stale: every command has help text and is in the README."""

from __future__ import annotations

import re
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


def _section(name: str) -> str:
    """The README section (from its heading to the next one) that documents command `name`."""
    sections = re.split(r"\n(?=#{2,4} )", README)
    found = [s for s in sections if f"`{name}" in s and not s.startswith("## Quick start")]
    assert found, f"{name} is not documented in README.md"
    return "\n".join(found)


def test_every_command_has_help_and_is_documented():
    root = typer.main.get_command(app)
    commands = list(_commands(root))
    assert len(commands) >= 6
    for name, command in commands:
        assert (command.help or "").strip(), f"{name} has no help"
        section = _section(name)
        for param in command.params:
            if isinstance(param, Option) and not param.hidden:
                assert (param.help or "").strip(), f"{name} {param.opts} has no help"
                long = [o for o in param.opts if o.startswith("--") and o != "--help"]
                if long and name != "atlas":
                    assert any(o in section for o in long), (
                        f"{name} {long} is not in the README section documenting {name}"
                    )
