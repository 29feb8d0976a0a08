"""Shared CLI plumbing: the per-invocation context, output helpers, the error table."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from atlas.errors import AtlasError

if TYPE_CHECKING:
    from atlas.api import Atlas

DEBUG_ENV = "ATLAS_DEBUG"
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped or redirected output keeps full model names: rich would otherwise assume 80 columns.
out_console = Console(
    highlight=False,
    soft_wrap=True,
    width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200,
)


@dataclass
class Context:
    """What the root options decided, and the store opened on first use."""

    db_url: str | None = None
    quiet: bool = False
    _atlas: Atlas | None = field(default=None, repr=False)

    def atlas(self) -> Atlas:
        if self._atlas is None:
            from atlas.api import Atlas

            self._atlas = Atlas(self.db_url)
        return self._atlas

    def info(self, message: str) -> None:
        """A message for people, on stderr, unless --quiet."""
        if not self.quiet:
            err_console.print(message)


def ctx_obj(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    if not isinstance(obj, Context):  # invoked without the root callback (tests)
        obj = Context()
        ctx.find_root().obj = obj
    return obj


def human_count(n: int | None) -> str:
    """1234567 -> '1.2M': parameter and download counts in tables."""
    if n is None:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def print_json(data: Any) -> None:
    """Data for scripts, on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run the CLI; return its exit code. Tracebacks only with ATLAS_DEBUG=1."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        app(args=args, standalone_mode=False, prog_name="atlas")
    except AtlasError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/red] {_one_line(str(exc))}", markup=True)
        if exc.hint:
            err_console.print(f"hint: {_one_line(exc.hint)}")
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: typer prints them with a usage line
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"error: {_one_line(exc.format_message())}")
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # last resort: never a traceback for users
        if debug:
            raise
        err_console.print(
            f"[red]error:[/red] unexpected {type(exc).__name__}: {_one_line(str(exc))}", markup=True
        )
        err_console.print(f"hint: rerun with {DEBUG_ENV}=1 for the full traceback")
        return 1
    return 0
