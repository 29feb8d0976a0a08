"""The scoring fleet: `sync --enqueue` and real `atlas worker` processes on real Postgres,
scoring the zoo from the local Hub; chaos with kill -9; SIGTERM; the SQLite refusal."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _sync_hub import PIECES_PER_MODEL, TINY, add_tiny, atlas_cmd, start_hub, subprocess_env
from sqlmodel import func, select

from atlas.queue.tasks import refresh_runs
from atlas.store import Store
from atlas.store import queue as queries
from atlas.store.tables import HubModel, Vector
from atlas.testing.demo_hub import EXPECTED

GOOD = ["atlas-zoo/llama-base", "atlas-zoo/qwen-chat-a", "atlas-zoo/llama-chat-b"]
BAD = ["atlas-zoo/broken-template", "atlas-zoo/nan"]


def _env(home: Path, endpoint: str, url: str, **extra: str) -> dict[str, str]:
    env = subprocess_env(home, endpoint)
    env.update(ATLAS_DATABASE_URL=url, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(atlas_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(atlas_cmd("worker", "--device", "cpu", *args), env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))  # fmt: skip


def _vector_counts(store: Store) -> dict[str, int]:
    with store.session() as s:
        rows = s.exec(
            select(HubModel.repo_id, func.count(Vector.id))
            .join(Vector, Vector.model_id == HubModel.id)
            .group_by(HubModel.repo_id)
        ).all()
    return {repo: int(n) for repo, n in rows}


def _jobs(store: Store) -> list[queries.JobRow]:
    return queries.job_rows(store, stalled_after=300)


def _busy_workers(store: Store) -> list[dict]:
    """Workers (with their pid) that are running a scoring job right now."""
    return [
        {"id": w.id, "pid": w.info.get("pid")}
        for w in queries.worker_rows(store)
        if w.model is not None and w.info.get("pid")
    ]


def _wait(procs: list[subprocess.Popen], timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("workers did not finish:\n" + logs.read_text()[-4000:])


@pytest.mark.slow
def test_enqueue_then_three_workers_score_everything_once(tmp_path, pg_url, zoo_by_name) -> None:
    from atlas import Atlas

    only = [*GOOD, *BAD, "community/giant-72b"]
    hub = start_hub(tmp_path / "repos", list(zoo_by_name.values()), only)
    home = tmp_path / "home"
    env = _env(home, hub.endpoint, pg_url)
    logs = tmp_path / "workers.log"
    add_tiny(pg_url)
    try:
        # An index and a map already exist (two local models), so the fleet must refresh them.
        with Atlas(pg_url, home=home) as a:
            for name in ("atlas-zoo/qwen-base", "atlas-zoo/llama-chat-a"):
                a.score(zoo_by_name[name].path, TINY, variants="base")
            a.refresh_map("pca", textset=TINY)
            a.refresh_indexes(TINY)
            a.nearest("llama-chat-a", k=1, textset=TINY)
            snapshots = len(a.map_snapshots(TINY))
        upgraded = _run(env, "db", "upgrade")
        assert "queue schema (procrastinate): created" in upgraded.stderr
        again = _run(env, "db", "upgrade")  # idempotent
        assert "queue schema (procrastinate): current" in again.stderr

        first = json.loads(_run(env, "sync", "--textset", TINY, "--enqueue", "--json").stdout)
        assert sorted(first["enqueued_models"]) == sorted([*GOOD, *BAD])
        assert first["scored"] == 0 and first["failed"] == 0
        # Nothing is scored by sync itself, and enqueueing again adds nothing.
        second = json.loads(_run(env, "sync", "--textset", TINY, "--enqueue", "--json").stdout)
        assert second["enqueued_models"] == [] and second["already_queued"] == len(GOOD + BAD)
        store = Store(pg_url)
        local = {"qwen-base": 2, "llama-chat-a": 2}  # base: conditional and unconditional
        assert _vector_counts(store) == local
        status = json.loads(_run(env, "queue", "status", "--json").stdout)
        assert status["counts"] == {"waiting": len(GOOD + BAD)}

        procs = [_worker(env, logs, "--until-empty") for _ in range(3)]
        _wait(procs, 900, logs)
        assert [p.returncode for p in procs] == [0, 0, 0], logs.read_text()[-4000:]

        rows = {m.repo_id: (m.status, m.reason) for m in store.models() if m.source == "hub"}
        assert rows == {r: EXPECTED[r] for r in only}
        assert _vector_counts(store) == {**local, **dict.fromkeys(GOOD, PIECES_PER_MODEL)}
        jobs = _jobs(store)
        by_model = {j.model: j.status for j in jobs if j.task == "atlas.score"}
        assert by_model == {**dict.fromkeys(GOOD, "succeeded"), **dict.fromkeys(BAD, "failed")}
        assert len([j for j in jobs if j.task == "atlas.score"]) == len(GOOD + BAD)
        # procrastinate counts the finished run itself: one attempt each, nothing retried
        assert all(j.attempts == 1 for j in jobs if j.task == "atlas.score")
        assert queries.outstanding(store) == 0
        # one refresh, at the end: one new map snapshot holding every scored model
        assert refresh_runs(store, TINY) == 1
        with Atlas(pg_url, home=home) as a:
            snaps = a.map_snapshots(TINY)
            assert len(snaps) == snapshots + 1 and snaps[0].n_models == 2 + len(GOOD)
            refreshed = a.store.get_state(f"queue-refresh:{TINY}")["refreshed"]
            assert any(r.startswith("index") for r in refreshed)
            assert any(r.startswith("map") for r in refreshed)
        status = json.loads(_run(env, "queue", "status", "--json").stdout)
        assert status["counts"].get("waiting", 0) == status["counts"].get("running", 0) == 0
        failed = {j["model"]: j["last_error"] for j in status["jobs"] if j["state"] == "failed"}
        assert set(failed) == set(BAD) and failed["atlas-zoo/nan"].startswith("non-finite")
        assert status["workers"] == []  # all exited and unregistered
        line = _run(env, "status").stdout  # scoring and refresh jobs alike
        assert "succeeded" in line and f", {len(BAD)} failed; 0 live worker(s)" in line
        store.close()
    finally:
        hub.stop()


@pytest.mark.slow
def test_chaos_kill_9_workers_nothing_lost_or_duplicated(tmp_path, pg_url, zoo_models) -> None:
    only = [*GOOD, "atlas-zoo/qwen-base"]
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    home = tmp_path / "home"
    env = _env(home, hub.endpoint, pg_url, ATLAS_STALLED_AFTER="6", ATLAS_MAX_INTERRUPTS="100")
    logs = tmp_path / "workers.log"
    add_tiny(pg_url)
    store = Store(pg_url)
    rng = random.Random(12)
    kills, max_kills = 0, 12
    procs: list[subprocess.Popen] = []
    try:
        _run(env, "sync", "--textset", TINY, "--enqueue")
        procs = [_worker(env, logs) for _ in range(3)]
        deadline = time.monotonic() + 900  # a bound for a loaded machine; idle, about a minute
        while time.monotonic() < deadline:
            if queries.outstanding(store) == 0 and kills >= 10:
                break
            time.sleep(rng.uniform(0.3, 1.5))
            pids = [p.pid for p in procs]
            busy = [w["pid"] for w in _busy_workers(store) if w["pid"] in pids]
            if kills < max_kills and (busy or kills):
                # The first kill hits a worker in the middle of a model; then mostly such a
                # worker, else any worker, starting, idle or busy.
                pick_busy = busy and (not kills or rng.random() < 0.7)
                victim = rng.choice(busy) if pick_busy else rng.choice(pids)
                i = pids.index(victim)
                os.kill(procs[i].pid, signal.SIGKILL)
                procs[i].wait()
                kills += 1
                procs[i] = _worker(env, logs)
        else:
            pytest.fail("the queue never emptied:\n" + logs.read_text()[-4000:])
        for p in procs:
            p.send_signal(signal.SIGTERM)
        _wait(procs, 300, logs)
        assert kills >= 10
        assert "stalled on a silent worker" in logs.read_text()  # some kills hit running jobs
        rows = {m.repo_id: m.status for m in store.models()}
        assert rows == dict.fromkeys(only, "scored")  # nothing stuck in `scoring`
        assert _vector_counts(store) == dict.fromkeys(only, PIECES_PER_MODEL)  # no duplicates
        jobs = [j for j in _jobs(store) if j.task == "atlas.score"]
        assert sorted(j.model for j in jobs) == sorted(only)  # one job per model
        assert {j.status for j in jobs} == {"succeeded"}
        assert refresh_runs(store, TINY) >= 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        store.close()
        hub.stop()


@pytest.mark.slow
def test_concurrent_enqueues_make_no_duplicate_jobs_and_sigterm(tmp_path, pg_url, zoo_models):
    only = GOOD
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    home = tmp_path / "home"
    env = _env(home, hub.endpoint, pg_url)
    logs = tmp_path / "workers.log"
    add_tiny(pg_url)
    store = Store(pg_url)
    from atlas.queue import ensure_queue_schema

    ensure_queue_schema(store)
    worker = _worker(env, logs)
    try:
        # Workers already run while two enqueuers race: `sync` (discovery, lock) then the
        # library's enqueue from two threads at once.
        _run(env, "sync", "--textset", TINY, "--enqueue")
        from atlas.queue.enqueue import enqueue_models
        from atlas.sync import pending

        ts = store.textset(TINY)
        results = []

        def again() -> None:
            results.append(enqueue_models(store, pending(store, ts), ts))

        threads = [threading.Thread(target=again) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Whatever ran or waited, each model has at most one job that is waiting or running.
        active = [j.model for j in _jobs(store) if j.status in ("todo", "doing")]
        assert len(active) == len(set(active))
        # SIGTERM once a model is being scored: the worker finishes it, then exits 0.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(j.status == "doing" for j in _jobs(store)):
                break
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=600) == 0, logs.read_text()[-3000:]
        text = logs.read_text()
        assert "SIGTERM: finishing" in text and "worker stopped" in text
        assert not any(j.status == "doing" for j in _jobs(store))
        assert "scoring" not in {m.status for m in store.models()}
        # The rest waits for another worker; a second SIGTERM aborts a running model at once
        # and its job goes straight back on the queue.
        worker = _worker(env, logs)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            doing = [j for j in _jobs(store) if j.status == "doing"]
            if doing and store.model(doing[0].model).status == "scoring":
                break
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 143
        assert "aborting" in logs.read_text()
        assert not any(j.status == "doing" for j in _jobs(store))
        # `--devices` starts one worker process per device (here the one CPU).
        _run(env, "worker", "--devices", "cpu", "--until-empty", timeout=900)
        assert {m.status for m in store.models()} == {"scored"}
        assert _vector_counts(store) == dict.fromkeys(only, PIECES_PER_MODEL)
        jobs = [j for j in _jobs(store) if j.task == "atlas.score"]
        assert {j.status for j in jobs} == {"succeeded"}
        assert sorted(j.model for j in jobs) == sorted(only)  # one job each, the abort included
    finally:
        if worker.poll() is None:
            worker.kill()
        store.close()
        hub.stop()


@pytest.mark.slow
def test_a_small_worker_leaves_a_large_model_for_one_that_can_hold_it(
    tmp_path, pg_url, zoo_by_name
) -> None:
    small, large = "atlas-zoo/qwen-chat-a", "atlas-zoo/llama-chat-b"  # 129,600 and 182,848
    hub = start_hub(tmp_path / "repos", list(zoo_by_name.values()), [small, large])
    env = _env(tmp_path / "home", hub.endpoint, pg_url)
    add_tiny(pg_url)
    store = Store(pg_url)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    # 600 kB of float32 weights on the CPU: 150,000 parameters, the small model but not the other
    worker = _worker(env, log_a, "--max-memory", "600kB")
    try:
        _run(env, "sync", "--textset", TINY, "--enqueue")
        queues = {j.model: j.queue for j in _jobs(store) if j.task == "atlas.score"}
        assert queues == {small: "atlas-131K", large: "atlas-185K"}
        deadline = time.monotonic() + 300
        while store.model(small).status != "scored" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.model(small).status == "scored", log_a.read_text()[-3000:]
        time.sleep(3 * 2.0)  # several polls: the small worker still does not take the other
        status = json.loads(_run(env, "queue", "status", "--json").stdout)
        job = next(j for j in status["jobs"] if j["model"] == large)
        assert job["state"] == "waiting" and job["queue"] == "atlas-185K"
        assert job["last_error"] == "no live worker holds 185K parameters (the largest holds 150K)"
        assert [w["max_parameters"] for w in status["workers"]] == [150_000]
        assert store.model(large).status == "queued"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=300) == 0, log_a.read_text()[-3000:]
        # A worker that can hold it (no cap: the machine's free memory) takes it, first time.
        worker = _worker(env, log_b, "--until-empty")
        assert worker.wait(timeout=600) == 0, log_b.read_text()[-3000:]
        assert {m.status for m in store.models() if m.source == "hub"} == {"scored"}
        jobs = [j for j in _jobs(store) if j.task == "atlas.score"]
        assert {j.status for j in jobs} == {"succeeded"} and all(j.attempts == 1 for j in jobs)
        assert "models up to 150K parameters" in log_a.read_text()
        assert large not in log_a.read_text() and small in log_a.read_text()
        assert large in log_b.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
        store.close()
        hub.stop()


def test_size_classes_route_models_to_workers_that_hold_them() -> None:
    import random

    from atlas.errors import UsageError
    from atlas.queue import QUEUE, queue_size, queues_for, size_queue
    from atlas.scoring import placement as p

    assert size_queue(None) == size_queue(0) == QUEUE and queue_size(QUEUE) is None
    names = [size_queue(step) for step in p.LADDER]
    assert len(set(names)) == len(names)  # 3 significant digits tell the steps apart
    assert p.human_count(8_589_934_592) == "8.59B" and size_queue(70_000_000_000) == "atlas-71.8B"
    rng = random.Random(0)
    for _ in range(2000):
        n = int(10 ** rng.uniform(4, 12.5))
        step = p.size_class(n)
        assert step >= n and (step == p.LADDER[0] or step < n * 1.045)
        assert queue_size(size_queue(n)) == step
    gib = p.GIB
    for _ in range(300):
        free = {f"cuda:{i}": int(rng.uniform(1, 200) * gib) for i in range(rng.randint(1, 4))}
        dtype = rng.choice(["bfloat16", "float32"])
        cap = p.capacity(free, dtype)
        # A worker's queues hold only models it can load, and it can load nothing much larger.
        for name in queues_for(cap)[1:]:
            assert p.can_hold(queue_size(name), free, dtype)
        if cap:
            assert p.can_hold(cap, free, dtype) and not p.can_hold(cap + 2, free, dtype)
    two = {"cuda:0": 80 * gib, "cuda:1": 80 * gib}  # 70B in bf16 needs both
    assert p.capacity({"cuda:0": 80 * gib}) < 70e9 < p.capacity(two)
    assert p.capacity(two, cap=20 * gib) == int(40 * gib / p.SPLIT_SLACK) // 2
    assert p.parse_memory("40GiB") == 40 * gib and p.parse_memory("80GB") == 80 * 10**9
    assert p.parse_memory("1.5 MiB") == 1_572_864 and p.parse_memory("600kB") == 600_000
    for bad in ("forty", "10 parsecs", "0GiB", ""):
        with pytest.raises(UsageError):
            p.parse_memory(bad)


def test_sqlite_store_refuses_a_queue(cli, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never reached
    for args in (("sync", "--enqueue"), ("schedule", "--enqueue"), ("worker",),
                 ("queue", "status")):  # fmt: skip
        result = cli(*args)
        assert result.exit_code == 2, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "queue needs a Postgres store" in errors[0], result.stderr
        assert "Traceback" not in result.stderr
    status = cli("status", "--json")
    assert json.loads(status.stdout)["queue"] is None
    assert cli("models", "list", "--json").stdout.strip() == "[]"  # nothing was written


def test_db_upgrade_adds_the_queue_to_an_existing_postgres_atlas(cli, pg_url) -> None:
    store = Store(pg_url)  # an atlas at the current schema, without the queue
    try:
        assert not queries.queue_tables_exist(store)
        result = cli("--db", pg_url, "db", "upgrade")
        assert result.exit_code == 0 and "queue schema (procrastinate): created" in result.stderr
        assert queries.queue_tables_exist(store)
        recorded = store.get_state(queries.SCHEMA_STATE_KEY)
        assert recorded["version"].startswith("3.") and recorded["migrations"]
        # A migration not yet applied (as a newer procrastinate would bring) runs exactly once.
        store.set_state(queries.SCHEMA_STATE_KEY, {**recorded,
                                                   "migrations": recorded["migrations"][:-1]})
        assert queries.apply_schema(store).migrations == (recorded["migrations"][-1],)
        assert queries.apply_schema(store).action == "current"
        status = cli("--db", pg_url, "queue", "status", "--json")
        assert json.loads(status.stdout)["counts"] == {}
        assert "queue:    no jobs; 0 live worker(s)" in cli("--db", pg_url, "status").stdout
    finally:
        store.close()


def test_device_lists(cli, pg_url) -> None:
    from atlas.errors import UsageError
    from atlas.queue.worker import expand_devices, worker_device

    assert expand_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert worker_device("cpu") == "cpu" and worker_device("auto") is None
    for bad in ("cuda:0,cuda:0", " , "):
        with pytest.raises(UsageError):
            expand_devices(bad)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            expand_devices("all")
        with pytest.raises(UsageError, match="0 CUDA device"):
            worker_device("cuda:1")
    both = cli("--db", pg_url, "worker", "--device", "cpu", "--devices", "cpu")
    assert both.exit_code == 2 and "not both" in both.stderr
    for args in (["--shard"], ["--devices", "cpu", "--shard"]):
        alone = cli("--db", pg_url, "worker", *args)
        assert alone.exit_code == 2 and "--shard needs --devices with two" in alone.stderr
    memory = cli("--db", pg_url, "worker", "--max-memory", "lots")
    assert memory.exit_code == 2 and "cannot read memory size 'lots'" in memory.stderr
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="0 CUDA device"):
            worker_device("cuda:0,cuda:1")


def test_retry_strategy_retries_passing_failures_only(monkeypatch) -> None:
    from procrastinate.jobs import Job

    from atlas.queue.tasks import RETRIES, NotRetried, PassingFailure, retry_strategy
    from atlas.settings import Settings

    monkeypatch.setenv("ATLAS_RETRY_WAIT", "3")
    strategy = retry_strategy(Settings.from_env())

    def decision(exc: Exception, attempts: int):
        job = Job(id=1, queue="atlas", lock=None, queueing_lock=None, task_name="atlas.score",
                  attempts=attempts)  # fmt: skip
        return strategy.get_retry_decision(exception=exc, job=job)

    assert decision(NotRetried("template-mismatch"), 0) is None
    from datetime import datetime, timezone

    waits = [decision(PassingFailure("download-error"), a) for a in range(RETRIES)]
    now = datetime.now(timezone.utc)
    seconds = [(d.retry_at - now).total_seconds() for d in waits]
    assert all(abs(got - 3 ** (k + 1)) < 1 for k, got in enumerate(seconds)), seconds
    assert decision(PassingFailure("download-error"), RETRIES) is None  # bounded
    assert decision(OSError("connection lost"), 0) is not None
