"""Benchmark the scoring fleet: throughput of 1, 2 and 4 CPU workers on one Postgres atlas, the
queue's overhead per job, and the time from a worker's death to its job running elsewhere.

Each round uses a throw-away Postgres database, the tiny model zoo served by the local Hub,
and `--sets` text sets of `--pairs` sample pairs (all 4 variants and the unconditional vector):
one scoring job per (model, text set). Workers are real `atlas worker --until-empty`
processes with one torch thread each. Figures come from procrastinate's own event table:

- throughput: scoring jobs per minute between the first job's start and the last job's end
  (worker start-up, mostly importing torch, is reported apart);
- queue overhead per job: worker time between the first job's start and the last job's end
  not spent inside a job (finishing it, claiming the next with SKIP LOCKED, bookkeeping); with
  one worker exactly that, with more it also holds the idle tail while the last jobs finish;
- death to rerun: a worker is killed with SIGKILL while scoring; the time until another worker
  runs the same job (bounded by ATLAS_STALLED_AFTER + the stalled-job check period + polling).

    python benchmarks/fleet.py                       # about 3-5 minutes on 2 idle cores
    python benchmarks/fleet.py --quick               # a smoke run
    ATLAS_TEST_POSTGRES_URL=postgresql+psycopg://user@host/db python benchmarks/fleet.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get(
    "ATLAS_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
MODELS = [
    "atlas-zoo/llama-base", "atlas-zoo/qwen-base", "atlas-zoo/llama-chat-a",
    "atlas-zoo/llama-chat-b", "atlas-zoo/qwen-chat-a", "atlas-zoo/qwen-chat-b",
]  # fmt: skip


class Database:
    """A throw-away Postgres database with the atlas schema, the queue and the text sets."""

    def __init__(self, sets: int, pairs: int) -> None:
        from atlas.queue import ensure_queue_schema
        from atlas.store import Store
        from atlas.textsets import ensure_sample, import_items, load_items

        self.name = f"atlas_bench_{uuid.uuid4().hex[:10]}"
        self.admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = make_url(ADMIN_URL).set(database=self.name).render_as_string(False)
        self.store = Store(self.url)
        ensure_queue_schema(self.store)
        ensure_sample(self.store)
        _, items = load_items(self.store, "sample")
        self.textsets = []
        for i in range(sets):
            name = f"bench-{i}"
            import_items(self.store, name, items[i * pairs : (i + 1) * pairs], source="bench")
            self.textsets.append(name)

    def drop(self) -> None:
        self.store.close()
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def enqueue_all(db: Database, home: Path) -> int:
    """`atlas sync --enqueue` for every text set; returns the number of scoring jobs."""
    from atlas import Atlas

    n = 0
    with Atlas(db.url, home=home) as a:
        for name in db.textsets:
            n += len(a.sync(textset=name, enqueue=True).enqueued)
    return n


def worker_env(home: Path, endpoint: str, url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ATLAS_HOME=str(home), ATLAS_DATABASE_URL=url, HF_ENDPOINT=endpoint,
        HF_HOME=str(home / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra,
    )  # fmt: skip
    env.pop("HF_TOKEN", None)
    return env


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "atlas", "--quiet", "worker", "--device", "cpu", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def job_times(db: Database) -> list[dict[str, Any]]:
    """Scoring jobs with their worker, start and end (epoch seconds) from procrastinate_events."""
    query = text(
        "SELECT j.id, j.worker_id,"
        " EXTRACT(EPOCH FROM max(e.at) FILTER (WHERE e.type = 'started')) AS started,"
        " EXTRACT(EPOCH FROM max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed'))) AS ended"
        " FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id"
        " WHERE j.task_name = 'atlas.score' GROUP BY j.id, j.worker_id ORDER BY started"
    )
    with db.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def throughput_round(workers: int, args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    db = Database(args.sets, args.pairs)
    home = Path(tempfile.mkdtemp(prefix="atlas-bench-fleet-"))
    try:
        jobs = enqueue_all(db, home)
        env = worker_env(home, endpoint, db.url)
        launched = time.monotonic()
        procs = [start_worker(env, "--until-empty") for _ in range(workers)]
        codes = [p.wait(timeout=3600) for p in procs]
        wall = time.monotonic() - launched
        times = job_times(db)
        start = min(float(t["started"]) for t in times)
        end = max(float(t["ended"]) for t in times)
        # procrastinate forgets a job's worker when the worker exits, so the overhead is what
        # the workers' time between the first start and the last end did not spend in jobs.
        busy = sum(float(t["ended"]) - float(t["started"]) for t in times)
        overhead = (workers * (end - start) - busy) / len(times)
        per_job = statistics.median(float(t["ended"]) - float(t["started"]) for t in times)
        return {
            "workers": workers, "jobs": jobs, "exit_codes": codes,
            "span_s": round(end - start, 2), "wall_s": round(wall, 2),
            "startup_s": round(wall - (end - start), 2),
            "jobs_per_min": round(len(times) / (end - start) * 60, 2),
            "job_median_s": round(per_job, 3),
            "overhead_ms": round(overhead * 1000, 1),
        }  # fmt: skip
    finally:
        db.drop()


def death_to_rerun(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    """Kill the worker running a job with SIGKILL; time until another worker runs that job."""
    db = Database(1, args.pairs)
    home = Path(tempfile.mkdtemp(prefix="atlas-bench-fleet-"))
    stalled = str(args.stalled_after)
    procs: list[subprocess.Popen] = []
    try:
        enqueue_all(db, home)
        env = worker_env(home, endpoint, db.url, ATLAS_STALLED_AFTER=stalled)
        procs = [start_worker(env) for _ in range(2)]
        with db.store.engine.connect() as conn:
            row = None
            while row is None:
                row = conn.execute(text(
                    "SELECT j.id, j.worker_id, s.value->>'pid' AS pid FROM procrastinate_jobs j"
                    " JOIN state s ON s.key = 'queue-worker:' || j.worker_id::text"
                    " WHERE j.status = 'doing' AND j.task_name = 'atlas.score' LIMIT 1"
                )).mappings().first()  # fmt: skip
                conn.rollback()
                time.sleep(0.02)
            os.kill(int(row["pid"]), signal.SIGKILL)
            killed = time.monotonic()
            while True:
                again = conn.execute(
                    text("SELECT status::text, worker_id FROM procrastinate_jobs WHERE id = :i"),
                    {"i": row["id"]},
                ).one()
                conn.rollback()
                if again[0] in ("doing", "succeeded") and again[1] != row["worker_id"]:
                    break
                time.sleep(0.02)
            seconds = time.monotonic() - killed
        return {"stalled_after_s": args.stalled_after, "death_to_rerun_s": round(seconds, 2)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        db.drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=24, help="pairs per text set")
    parser.add_argument("--sets", type=int, default=2, help="text sets (jobs = 6 x sets)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare")
    parser.add_argument("--stalled-after", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.sets, args.workers, args.stalled_after = 4, 1, "1,2", 3.0
    import platformdirs

    from atlas.testing import zoo
    from atlas.testing.demo_hub import demo_repos
    from atlas.testing.hub import LocalHub

    root = Path(tempfile.gettempdir()) / "atlas-bench-fleet"
    # The zoo cache the tests share (ATLAS_TEST_CACHE, default the user cache dir).
    cache = os.environ.get("ATLAS_TEST_CACHE") or platformdirs.user_cache_dir("atlas-tests")
    models = zoo.build_zoo_cached(Path(cache) / "zoo")
    specs = [s for s in demo_repos(root, models) if s.repo_id in MODELS]
    hub = LocalHub(specs)
    hub.start()
    os.environ["HF_ENDPOINT"] = hub.endpoint
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "rounds": []}
    try:
        for k in (int(x) for x in args.workers.split(",")):
            r = throughput_round(k, args, hub.endpoint)
            results["rounds"].append(r)
            print(f"{k} worker(s): {r['jobs']} jobs, {r['jobs_per_min']:.1f} jobs/min "
                  f"(span {r['span_s']:.1f} s, start-up {r['startup_s']:.1f} s), median job "
                  f"{r['job_median_s']:.2f} s, overhead {r['overhead_ms']} ms per job",
                  file=sys.stderr)  # fmt: skip
        base = results["rounds"][0]["jobs_per_min"]
        for r in results["rounds"]:
            r["speedup"] = round(r["jobs_per_min"] / base, 2)
        results["death"] = death_to_rerun(args, hub.endpoint)
    finally:
        hub.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"CPU cores: {results['cpu_count']}")
    print("| workers | jobs | jobs/min | speed-up | median job s | overhead ms per job |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results["rounds"]:
        print(f"| {r['workers']} | {r['jobs']} | {r['jobs_per_min']:.1f} | {r['speedup']:.2f}x | "
              f"{r['job_median_s']:.2f} | {r['overhead_ms']} |")
    d = results["death"]
    print(f"death to rerun: {d['death_to_rerun_s']:.1f} s with ATLAS_STALLED_AFTER="
          f"{d['stalled_after_s']:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
