"""Shared CLI plumbing: the per-invocation context, output helpers, the error table."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from atlas.errors import AtlasError, StoreUnavailable
from atlas.settings import redact

if TYPE_CHECKING:
    from atlas.api import Atlas

DEBUG_ENV = "ATLAS_DEBUG"
# markup=False: stored strings (model and text-set names) are printed as text, never as markup.
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
# Piped or redirected output keeps full model names: rich would otherwise assume 80 columns.
out_console = Console(
    highlight=False,
    soft_wrap=True,
    markup=False,
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
        """A message for people, on stderr, unless --quiet (printed as text, never markup)."""
        if not self.quiet:
            err_console.print(Text(safe(message)))


def silence_libraries() -> None:
    """--quiet: no progress bars, warnings or info logs from huggingface_hub and transformers."""
    import logging
    import warnings

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TQDM_DISABLE"] = "1"
    for name in ("huggingface_hub", "transformers", "filelock", "httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("huggingface_hub", "transformers", "torch"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?")
    if "huggingface_hub" in sys.modules:  # already imported (in-process callers)
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def ctx_obj(ctx: typer.Context) -> Context:
    obj = ctx.find_root().obj
    if not isinstance(obj, Context):  # invoked without the root callback (tests)
        obj = Context()
        ctx.find_root().obj = obj
    return obj


# C0/C1 controls (newline and tab kept), bidi embeddings, overrides and isolates, zero-width and
# other format characters, line/paragraph separators, BOM, lone surrogates.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ud800-\udfff]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: object) -> str:
    """A stored string made safe for a terminal: control, bidi and format characters escaped."""
    text = "" if value is None else str(value)
    return _UNSAFE.sub(_escape_char, text)


def cell(value: object) -> Text:
    """A table cell from a stored string: never parsed as markup, control characters escaped."""
    return Text(safe(value))


def human_count(n: int | None) -> str:
    """1234567 -> '1.2M': parameter and download counts in tables."""
    if n is None:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class _Bar:
    """A rich progress bar on stderr, started on the first `(advance, total)` report."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar: Any = None

    def __call__(self, advance: int, total: int) -> None:
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
            )  # fmt: skip
            self._bar.add_task(escape(safe(self.description)), total=total)
            self._bar.start()
        self._bar.advance(0, advance)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[_Bar | None]:
    """A `(advance, total)` progress callback drawing a bar on stderr (None when quiet)."""
    if quiet:
        yield None
        return
    bar = _Bar(description)
    try:
        yield bar
    finally:
        bar.stop()


def print_json(data: Any) -> None:
    """Data for scripts, on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _one_line(text: object) -> str:
    """One line, credentials hidden, terminal-safe."""
    return safe(" ".join(redact(str(text)).split()))


def _error(message: str, hint: str | None = None) -> None:
    line = Text("error:", style="red")
    line.append(f" {_one_line(message)}")
    err_console.print(line)
    if hint:
        err_console.print(Text(f"hint: {_one_line(hint)}"))


def _known_failure(exc: BaseException) -> AtlasError | None:
    """Errors of the world (database refusing a write, a full disk) as atlas errors."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        orig = str(exc.orig if exc.orig is not None else exc).strip()
        first = orig.splitlines()[0] if orig else type(exc).__name__
        return StoreUnavailable(
            f"the database refused the operation: {first}",
            hint="check that the database is writable and its disk is not full; nothing was "
            "half-written (the transaction was rolled back)",
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f": {exc.filename}" if exc.filename else ""
        return StoreUnavailable(
            f"{exc.strerror or type(exc).__name__}{where}",
            hint="check free disk space and the permissions of ATLAS_HOME",
        )
    if isinstance(exc, RecursionError):
        return AtlasError("input nested too deeply to process")
    return None


def _option_flags(app: typer.Typer) -> dict[str, str]:
    """Parameter name -> its command-line flag (`max_tokens` -> `--max-tokens`), every command."""
    import click

    flags: dict[str, str] = {}
    stack = [typer.main.get_command(app)]
    while stack:
        command = stack.pop()
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                longest = max(param.opts, key=len)
                flags.setdefault(param.name, longest)
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())
    return flags


def with_flags(app: typer.Typer, text: str) -> str:
    """A library message as the CLI says it: backticked parameter names become flags."""
    flags = _option_flags(app)
    return re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), m.group(0)), text)


def _crash_report() -> None:
    """A crash inside a native library (a segfault in BLAS, FAISS) prints where it happened
    and what to do, instead of ending the process silently."""
    import faulthandler

    if faulthandler.is_enabled() or sys.stderr is None:
        return
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured stderr (tests): nothing to attach
        return
    faulthandler.enable(file=sys.stderr, all_threads=False)


def run(app: typer.Typer, args: list[str] | None = None) -> int:
    """Run the CLI; return its exit code. Tracebacks only with ATLAS_DEBUG=1."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    _crash_report()
    try:
        app(args=args, standalone_mode=False, prog_name="atlas")
    except AtlasError as exc:
        if debug:
            raise
        _error(with_flags(app, str(exc)), with_flags(app, exc.hint) if exc.hint else None)
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
            _error(exc.format_message())
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # last resort: never a traceback for users
        if debug:
            raise
        known = _known_failure(exc)
        if known is not None:
            _error(str(known), known.hint)
            return known.exit_code
        _error(
            f"unexpected {type(exc).__name__}: {exc}",
            f"rerun with {DEBUG_ENV}=1 for the full traceback",
        )
        return 1
    return 0
