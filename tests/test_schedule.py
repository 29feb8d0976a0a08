"""`atlas schedule`: cron parsing, coalesced runs, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from datetime import datetime, timezone

import pytest
from _sync_hub import TINY, add_tiny, atlas_cmd, start_hub, subprocess_env
from sqlmodel import select

from atlas.errors import UsageError
from atlas.schedule import parse_cron, run_schedule
from atlas.store import Store
from atlas.store.tables import SyncRun

MONDAY = datetime(2025, 6, 2, 12, 0, tzinfo=timezone.utc)  # a Monday


def _next(expr: str, now: datetime = MONDAY) -> datetime:
    return parse_cron(expr).get_next_fire_time(None, now)


def test_crontab_fields_and_weekdays() -> None:
    assert _next("0 */6 * * *") == datetime(2025, 6, 2, 12, 0, tzinfo=timezone.utc)
    assert _next("30 1 * * *") == datetime(2025, 6, 3, 1, 30, tzinfo=timezone.utc)
    # cron counts weekdays from Sunday = 0 (and 7); apscheduler 3 from Monday: translated
    assert _next("0 9 * * 0").weekday() == 6
    assert _next("0 9 * * 7").weekday() == 6
    assert _next("0 9 * * 6").weekday() == 5
    assert _next("0 13 * * 1-5") == datetime(2025, 6, 2, 13, 0, tzinfo=timezone.utc)
    assert _next("0 9 * * sat,sun").weekday() == 5
    # six fields: seconds first
    assert _next("*/20 * * * * *", MONDAY.replace(second=1)) == MONDAY.replace(second=20)


@pytest.mark.parametrize("bad", ["* * *", "61 * * * *", "* * * * * * *", "x y z w v"])
def test_bad_cron_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_cron(bad)


def test_runs_are_coalesced_never_stacked() -> None:
    """A job slower than its every-second trigger never runs twice at once."""
    stop = threading.Event()
    active, peak, runs = 0, 0, []
    lock = threading.Lock()

    def job(flag: threading.Event) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        runs.append(time.monotonic())
        flag.wait(1.6)
        with lock:
            active -= 1
        if len(runs) >= 2:
            stop.set()

    threading.Timer(20, stop.set).start()  # a safety net
    result = run_schedule(job, "* * * * * *", stop=stop, install_signals=False)
    assert result.runs == len(runs) >= 2
    assert peak == 1


@pytest.mark.slow
def test_schedule_subprocess_syncs_twice_and_stops_on_sigterm(tmp_path, zoo_models) -> None:
    # qwen-chat-b has 3,100 downloads: the schedule's own filter skips it.
    only = ["atlas-zoo/llama-chat-a", "atlas-zoo/qwen-chat-b"]
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'atlas.db'}"
    add_tiny(url)
    cmd = atlas_cmd("schedule", "--cron", "*/2 * * * * *", "--textset", TINY,
                    "--min-downloads", "10000")  # fmt: skip
    proc = subprocess.Popen(cmd, env=subprocess_env(home, hub.endpoint), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    store = Store(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            with store.session() as s:
                done = [r for r in s.exec(select(SyncRun)) if r.finished_at is not None]
            if len(done) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert "scheduler stopped after" in err
        with store.session() as s:
            runs = list(s.exec(select(SyncRun).order_by(SyncRun.id)))
        assert len(runs) >= 2 and runs[0].counts["scored"] == 1
        assert all(r.status in ("ok", "stopped") for r in runs)
        assert store.model("atlas-zoo/llama-chat-a").status == "scored"
        skipped = store.model("atlas-zoo/qwen-chat-b")
        assert (skipped.status, skipped.reason) == ("skipped", "low-downloads")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        store.close()
        hub.stop()


@pytest.mark.slow
def test_sigterm_stops_after_the_current_model(tmp_path, zoo_models) -> None:
    only = ["atlas-zoo/llama-base", "atlas-zoo/qwen-base", "atlas-zoo/llama-chat-a",
            "atlas-zoo/qwen-chat-a", "atlas-zoo/llama-chat-b", "atlas-zoo/qwen-chat-b"]  # fmt: skip
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'atlas.db'}"
    add_tiny(url)
    cmd = atlas_cmd("schedule", "--cron", "* * * * * *", "--textset", TINY)
    proc = subprocess.Popen(cmd, env=subprocess_env(home, hub.endpoint), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    store = Store(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if store.status_counts().get("scored", 0) >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        counts = store.status_counts()
        # the model being scored when the signal came was finished; the rest wait, queued
        assert 1 <= counts.get("scored", 0) < len(only)
        assert counts.get("scoring", 0) == 0
        assert counts.get("scored", 0) + counts.get("queued", 0) == len(only)
        assert store.last_sync().status == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        store.close()
        hub.stop()
