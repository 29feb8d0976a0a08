"""`atlas schedule`: run sync in the foreground on a cron expression (apscheduler 3).

Runs are coalesced, never stacked (`coalesce=True, max_instances=1`); SIGTERM or SIGINT asks
the running sync to stop after its current model, then the scheduler exits cleanly.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from atlas.errors import AtlasError, LockHeld, UsageError

DEFAULT_CRON = "0 */6 * * *"
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")

Job = Callable[[threading.Event], Any]


def _cron_weekdays(field_: str) -> str:
    """Cron counts weekdays from Sunday = 0 (7 too); apscheduler 3 from Monday: use names."""
    return re.sub(r"(?<![/\d])([0-7])(?!\d)", lambda m: _DOW_NAMES[int(m.group(1))], field_)


def parse_cron(expr: str, timezone: Any = None) -> Any:
    """A CronTrigger from 5 crontab fields, or 6 with seconds first (`*/2 * * * * *`)."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    names = ("minute", "hour", "day", "month", "day_of_week")
    if len(fields) == 6:
        names = ("second", *names)
    elif len(fields) != 5:
        raise UsageError(
            f"a cron expression has 5 fields (minute hour day month weekday), or 6 with "
            f"seconds first; got {len(fields)} in {expr!r}"
        )
    values = dict(zip(names, fields, strict=True))
    values["day_of_week"] = _cron_weekdays(values["day_of_week"])
    try:
        return CronTrigger(**values, timezone=timezone or "UTC")
    except ValueError as exc:
        raise UsageError(f"invalid cron expression {expr!r}: {exc}") from None


@dataclass
class ScheduleResult:
    """What the scheduler did before it stopped."""

    runs: int = 0
    errors: list[str] = field(default_factory=list)
    stopped_by: str | None = None


def run_schedule(
    job: Job,
    cron: str = DEFAULT_CRON,
    *,
    say: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    install_signals: bool = True,
) -> ScheduleResult:
    """Run `job(stop_event)` on `cron` until SIGTERM/SIGINT (or `stop`), in the foreground."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    trigger = parse_cron(cron)
    say = say or (lambda _m: None)
    stop = stop or threading.Event()
    result = ScheduleResult()
    running = threading.Lock()
    scheduler = BlockingScheduler(timezone="UTC")

    def tick() -> None:
        if stop.is_set():
            return
        with running:
            result.runs += 1
            started = datetime.now().astimezone()
            say(f"run {result.runs} started at {started:%Y-%m-%d %H:%M:%S %Z}")
            try:
                job(stop)
            except LockHeld as exc:
                say(f"run {result.runs} skipped: {exc}")
            except AtlasError as exc:
                result.errors.append(str(exc))
                say(f"run {result.runs} failed: {exc}")
            except Exception as exc:  # keep the scheduler alive; the next run may succeed
                result.errors.append(f"{type(exc).__name__}: {exc}")
                say(f"run {result.runs} failed: {type(exc).__name__}: {exc}")

    scheduler.add_job(
        tick, trigger, id="atlas-sync", coalesce=True, max_instances=1, misfire_grace_time=None
    )

    def request_stop(signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None:
            result.stopped_by = signal.Signals(signum).name
        if not stop.is_set():
            stop.set()
            say("stopping after the current model …")
        # shutdown() from another thread: the main thread may be inside the scheduler loop.
        threading.Thread(target=_shutdown, args=(scheduler,), daemon=True).start()

    def watch_stop() -> None:
        stop.wait()
        request_stop()

    previous: dict[int, Any] = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, request_stop)
    threading.Thread(target=watch_stop, daemon=True).start()
    say(f"scheduling sync on {cron!r} (UTC); SIGTERM or Ctrl-C stops after the current model")
    try:
        if not stop.is_set():
            scheduler.start()
        with running:  # a sync in flight finishes its current model before we return
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()
    return result


def _shutdown(scheduler: Any) -> None:
    """Stop the scheduler, waiting briefly if a stop came before it started."""
    from apscheduler.schedulers import SchedulerNotRunningError

    for _ in range(100):
        try:
            scheduler.shutdown(wait=False)
            return
        except SchedulerNotRunningError:
            time.sleep(0.05)
