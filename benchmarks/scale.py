"""Benchmark atlas at scale, end to end, as a user runs it: a synthetic living atlas.

Builds a store through the library API (N texts, conditional + unconditional base vectors with
token counts, families of related models whose fine-tunes record their base) at each model
count, once, into a cache folder that later runs reuse; then times every command as a
subprocess `atlas ...` with its CPU time (user + system) and peak memory (the child's maximum
RSS), both from wait4; on a busy machine the CPU time is the steadier figure:

    python benchmarks/scale.py                        # 1,000 / 5,000 / 20,000 models x 10,000 texts
    python benchmarks/scale.py --models 300 --texts 500 --timeout 120   # a smoke run
    python benchmarks/scale.py --big                  # 100,000 models too (~16 GB of disk)
    python benchmarks/scale.py --models 5000 --postgres postgresql+psycopg://postgres@127.0.0.1:5432

To time another version of atlas on the same stores, put its source first on PYTHONPATH (the
commands run from the store's folder, so the checkout's own package is not picked up there).

Each run starts from the same state (the extra models of a previous run, map snapshots, map
state and indexes removed). A command that runs past --timeout is killed and reported so. On a
shared machine the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nearest import Synth  # noqa: E402  (the same generator as the index benchmark)

EXTRA = "bench-extra"  # repo id prefix of the models a run adds (removed on the next run)
FAMILY_SIZE = 8  # models per family: one base and its fine-tunes
ATLAS = [sys.executable, "-m", "atlas"]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


POSTGRES: str | None = None  # a server URL (--postgres): each store is a database there


def database_url(home: Path) -> str:
    """The store of `home`: its SQLite file, or its database on the --postgres server."""
    if POSTGRES is None:
        return f"sqlite:///{home / 'atlas.db'}"
    return f"{POSTGRES.rstrip('/')}/atlas_bench_{home.name.replace('-', '_')}"


def _fresh_database(home: Path) -> None:
    """An empty Postgres database for the store of `home` (dropped first if it exists)."""
    from sqlalchemy import create_engine, text

    name = database_url(home).rsplit("/", 1)[1]
    engine = create_engine(f"{POSTGRES.rstrip('/')}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


# --- the store --------------------------------------------------------------------------------


def family_rows(synth: Synth, start: int, count: int) -> np.ndarray:
    """Rows start .. start+count where model i belongs to family i // FAMILY_SIZE."""
    from nearest import RANK

    rng = np.random.default_rng([synth.seed, start, count])
    family = (np.arange(start, start + count) // FAMILY_SIZE) % len(synth.families)
    latent = synth.families[family] + rng.standard_normal((count, RANK), dtype=np.float32) * 0.5
    out = latent @ synth.basis
    out += synth.mean
    out += rng.standard_normal((count, synth.n_dims), dtype=np.float32) * synth.noise
    out += rng.normal(scale=5.0, size=(count, 1)).astype(np.float32)
    return out


def _types(families: int) -> list[str]:
    names = ["llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "olmo", "falcon"]
    return [names[f % len(names)] for f in range(families)]


def build_store(home: Path, n_models: int, n_texts: int, *, batch: int = 250) -> dict:
    """A synthetic atlas of `n_models` models in `home` (or its --postgres database)."""
    from atlas.api import Atlas
    from atlas.store.tables import HubModel, Vector
    from atlas.textsets import Item, import_items

    home.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    atlas = Atlas(database_url(home), home=home)
    store = atlas.store
    items = [Item(prompt=f"prompt {i}", response=f"response {i}") for i in range(n_texts)]
    ts = import_items(store, "synth", items).textset
    families = max(1, n_models // FAMILY_SIZE)
    cond = Synth(n_texts, families=families, seed=1)
    uncond = Synth(n_texts, families=families, seed=2)
    types = _types(families)
    rng = np.random.default_rng(3)
    for start in range(0, n_models, batch):
        count = min(batch, n_models - start)
        c_rows, u_rows = family_rows(cond, start, count), family_rows(uncond, start, count)
        tokens = rng.integers(20, 400, size=(count, n_texts)).astype("<i4")
        models = []
        for i in range(start, start + count):
            fam = i // FAMILY_SIZE
            base = f"fam{fam}/base"
            name = base if i % FAMILY_SIZE == 0 else f"fam{fam}/tune-{i % FAMILY_SIZE}"
            models.append(HubModel(
                repo_id=name, author=f"fam{fam}", revision="r1", status="scored",
                model_type=types[fam % len(types)], architecture="ForCausalLM",
                num_parameters=int(rng.integers(1, 80)) * 10**8,
                downloads=int(rng.integers(0, 10**6)),
                base_models=[] if name == base else [base],
            ))  # fmt: skip
        with store.session() as s:
            s.add_all(models)
        pieces = []
        for j, m in enumerate(models):
            for kind, rows in (("conditional", c_rows), ("unconditional", u_rows)):
                pieces.append(Vector(
                    model_id=m.id, revision="r1", textset_id=ts.id, textset_sha256=ts.sha256,
                    variant="base", kind=kind, n=n_texts, values=rows[j].astype("<f4").tobytes(),
                    token_counts=tokens[j].tobytes(), dtype="float32", device="cpu",
                    scorer_version="synthetic",
                ))  # fmt: skip
        store.put_vectors(pieces)
        if start // batch % 20 == 0:
            _say(f"  built {start + count:,} / {n_models:,} models")
    atlas.close()
    info = {"models": n_models, "texts": n_texts, "build_s": time.perf_counter() - started}
    (home / "built.json").write_text(json.dumps(info))
    return info


def add_models(home: Path, n_texts: int, count: int, tag: str) -> None:
    """Score-like arrival of `count` new models (conditional + unconditional) into the store."""
    from atlas.api import Atlas
    from atlas.store.tables import HubModel, Vector

    with Atlas(database_url(home), home=home) as atlas:
        store = atlas.store
        ts = store.textset("synth")
        synth = Synth(n_texts, families=8, seed=9)
        rows = synth.rows(10**7 + hash(tag) % 1000, count)
        models = [HubModel(repo_id=f"{EXTRA}/{tag}-{i}", revision="r1", status="scored",
                           model_type="llama") for i in range(count)]  # fmt: skip
        with store.session() as s:
            s.add_all(models)
        store.put_vectors([
            Vector(model_id=m.id, revision="r1", textset_id=ts.id, textset_sha256=ts.sha256,
                   variant="base", kind=kind, n=n_texts, values=row.astype("<f4").tobytes(),
                   dtype="float32", device="cpu", scorer_version="synthetic")
            for m, row in zip(models, rows, strict=True)
            for kind in ("conditional", "unconditional")
        ])  # fmt: skip


def reset(home: Path) -> None:
    """Back to the built state: no extra models, map snapshots, map state or indexes."""
    from sqlmodel import col, delete

    from atlas.api import Atlas
    from atlas.store.tables import HubModel, MapSnapshot

    with Atlas(database_url(home), home=home) as atlas, atlas.store.session() as s:
        s.exec(delete(MapSnapshot))  # points cascade
        s.exec(delete(HubModel).where(col(HubModel.repo_id).startswith(f"{EXTRA}/")))
    for sub in ("maps", "indexes"):
        shutil.rmtree(home / sub, ignore_errors=True)
    shutil.rmtree(home / "export", ignore_errors=True)


# --- timing -----------------------------------------------------------------------------------


# Runs one command for `timed` and reports its wall time, CPU time, peak RSS and exit status.
# A small process of its own, so the command's peak RSS (wait4's ru_maxrss also counts the
# process it was forked from, before its exec) is not this benchmark's own memory.
LAUNCHER = """
import os, signal, sys, time
timeout, argv = float(sys.argv[1]), sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execvp(argv[0], argv)
killed = False
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    if time.perf_counter() - started > timeout:
        os.killpg(pid, signal.SIGKILL)
        killed = True
        _, status, usage = os.wait4(pid, 0)
        break
    time.sleep(0.02)
wall = time.perf_counter() - started
print(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
      os.waitstatus_to_exitcode(status), int(killed), file=sys.stdout, flush=True)
"""


def timed(home: Path, args: list[str], timeout: float) -> dict:
    """Run `atlas ARGS` against the store; wall and CPU seconds, peak RSS (GB), exit status."""
    env = {**os.environ, "ATLAS_HOME": str(home),
           "ATLAS_DATABASE_URL": database_url(home)}  # fmt: skip
    with open(os.devnull, "rb") as null:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(timeout), *ATLAS, *args],
                              env=env, cwd=home, stdin=null, capture_output=True)  # fmt: skip
    wall, cpu, rss, rc, killed = proc.stdout.decode().split()
    row = {"s": round(float(wall), 2), "cpu_s": round(float(cpu), 2),
           "rss_gb": round(int(rss) / 2**20, 2), "rc": int(rc),
           "killed": bool(int(killed))}  # fmt: skip
    if row["rc"] and not row["killed"]:
        row["stderr"] = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
    return row


def store_gb(home: Path) -> float:
    if POSTGRES is None:
        return sum(p.stat().st_size for p in home.glob("atlas.db*")) / 1e9
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url(home))
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    engine.dispose()
    return size / 1e9


def measure(home: Path, n_texts: int, timeout: float, only: set[str] | None) -> dict:
    """Every command of the table, in the order a user meets them."""
    reset(home)
    out: dict = {"store_gb": round(store_gb(home), 2)}
    query = "fam0/tune-1"

    def run(label: str, args: list[str]) -> None:
        if only and label not in only:
            return
        out[label] = timed(home, args, timeout)
        _say(f"  {label}: {out[label]}")

    run("help", ["--help"])
    run("nearest_build", ["nearest", query, "-k", "10"])
    run("nearest_again", ["nearest", query, "-k", "10"])
    add_models(home, n_texts, 10, "a")
    run("nearest_after_add", ["nearest", query, "-k", "10"])
    run("nearest_again2", ["nearest", query, "-k", "10"])
    run("map_pca_full", ["map", "refresh", "--method", "pca", "--full"])
    run("map_tsne_full", ["map", "refresh", "--method", "tsne", "--full"])
    run("map_unchanged", ["map", "refresh"])
    add_models(home, n_texts, 10, "b")
    run("map_tsne_place10", ["map", "refresh"])
    run("analyze_pmi", ["analyze", "pmi", "--textset", "synth"])
    run("analyze_lineage", ["analyze", "lineage", "--textset", "synth"])
    run("export", ["export", str(home / "export")])
    png = home / "export" / "analyses" / "lineage.png"
    if png.exists():
        out["lineage_png_mb"] = round(png.stat().st_size / 1e6, 2)
    run("models_list", ["models", "list"])
    run("models_list_json", ["models", "list", "--json"])
    return out


def map_overlap(home: Path, k: int = 10) -> dict:
    """How close the t-SNE used at scale stays to the exact one on this store: the mean share
    of each model's k nearest map neighbours that both maps agree on (and the same for exact
    t-SNE against itself with another seed, for scale)."""
    from atlas.api import Atlas
    from atlas.space import maps, matrices, vectors

    with Atlas(database_url(home), home=home) as atlas:
        m = matrices.load(atlas.store, "synth", with_tokens=False)
    threshold = vectors.clip_threshold(m.values)
    Q, _ = maps.reference(m.values, threshold)
    out: dict = {"models": len(Q)}
    started = time.perf_counter()
    exact, _, _ = maps.fit_tsne(Q)
    out["exact_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    approx, _, _ = maps.fit_tsne_approx(Q.astype(np.float32))
    out["approx_s"] = round(time.perf_counter() - started, 1)
    seed, maps.SEED = maps.SEED, 7
    try:
        reseeded, _, _ = maps.fit_tsne(Q)
    finally:
        maps.SEED = seed

    def neighbours(xy: np.ndarray) -> np.ndarray:
        return maps.knn(xy, None, k)[0]

    truth = neighbours(exact)

    def overlap(xy: np.ndarray) -> float:
        got = neighbours(xy)
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth, strict=True)]))

    out["overlap_approx_vs_exact"] = round(overlap(approx), 3)
    out["overlap_exact_other_seed"] = round(overlap(reseeded), 3)
    return out


def lineage_agreement(home: Path) -> dict:
    """How closely `analyze lineage` at scale (kNN neighbours re-ranked exactly) agrees with the
    exact all-pairs evaluation on this store: both run on the same models, then each evaluated
    model's listed neighbours, base rank and KL are compared."""
    from atlas.analyses import lineage
    from atlas.api import Atlas
    from atlas.space import index as kl_index

    def run(exact: bool) -> tuple[lineage.LineageResult, float]:
        saved = lineage.ALL_PAIRS_UP_TO, kl_index.ALL_PAIRS_UP_TO
        lineage.ALL_PAIRS_UP_TO = kl_index.ALL_PAIRS_UP_TO = 10**9 if exact else 0
        try:
            with Atlas(database_url(home), home=home) as atlas:
                started = time.process_time()
                result = lineage.analyze(atlas.store, "synth")
                return result, time.process_time() - started
        finally:
            lineage.ALL_PAIRS_UP_TO, kl_index.ALL_PAIRS_UP_TO = saved

    reset(home)  # the built models only
    exact, exact_s = run(True)
    knn, knn_s = run(False)
    pairs = list(zip(exact.rows, knn.rows, strict=True))
    assert all(a.model == b.model for a, b in pairs)

    def share(test: object) -> float:
        return round(float(np.mean([test(a, b) for a, b in pairs])), 4)  # type: ignore[operator]

    return {
        "models": exact.n_models, "evaluated": len(pairs),
        "exact_cpu_s": round(exact_s, 1), "knn_cpu_s": round(knn_s, 1),
        "precision_exact": exact.precision, "precision_knn": knn.precision,
        "hit_exact": exact.hit, "hit_knn": knn.hit,
        "same_nearest": share(lambda a, b: a.neighbours[:1] == b.neighbours[:1]),
        "same_top5_in_order": share(lambda a, b: a.neighbours == b.neighbours),
        "same_top5_as_set": share(lambda a, b: set(a.neighbours) == set(b.neighbours)),
        "same_base_rank": share(lambda a, b: a.base_rank == b.base_rank
                                or (a.base_rank > lineage.DEPTH and b.base_rank == 0)),
        "same_first_relative_rank": share(
            lambda a, b: a.first_relative_rank == b.first_relative_rank),
        "max_kl_base_rel_diff": float(max(abs(a.kl_base - b.kl_base) / a.kl_base
                                          for a, b in pairs)),
    }  # fmt: skip


LABELS = [
    ("store_gb", "store size (GB)"),
    ("help", "`atlas --help`"),
    ("nearest_build", "`atlas nearest M -k 10` first call (index build)"),
    ("nearest_again", "`atlas nearest` again"),
    ("nearest_after_add", "`nearest` right after 10 models were added"),
    ("nearest_again2", "`nearest` again after that"),
    ("map_pca_full", "`map refresh --method pca --full`"),
    ("map_tsne_full", "`map refresh --method tsne --full`"),
    ("map_unchanged", "`map refresh` with nothing new"),
    ("map_tsne_place10", "incremental t-SNE placement of 10 models"),
    ("analyze_pmi", "`analyze pmi`"),
    ("analyze_lineage", "`analyze lineage`"),
    ("export", "`atlas export`"),
    ("lineage_png_mb", "analyses/lineage.png (MB)"),
    ("models_list", "`models list` (table)"),
    ("models_list_json", "`models list --json`"),
]


def cell(value: object) -> str:
    if value is None:
        return "-"
    if not isinstance(value, dict):
        return f"{value}"
    if value["killed"]:
        return f"killed at {value['s']:.0f} s ({value['rss_gb']:.1f} GB)"
    if value["rc"]:
        return f"exit {value['rc']} at {value['s']:.1f} s"
    return f"{value['s']:.1f} s, cpu {value['cpu_s']:.1f} s ({value['rss_gb']:.1f} GB)"


def table(results: dict[int, dict]) -> str:
    sizes = sorted(results)
    lines = ["| command, end to end | " + " | ".join(f"{n:,} models" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]  # fmt: skip
    for key, label in LABELS:
        lines.append(f"| {label} | " + " | ".join(cell(results[n].get(key)) for n in sizes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1000,5000,20000",
                        help="model counts, comma-separated")  # fmt: skip
    parser.add_argument("--texts", type=int, default=10_000, help="texts per vector (N)")
    parser.add_argument("--big", action="store_true", help="also 100,000 models")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench-cache",
                        help="where the built stores are kept")  # fmt: skip
    parser.add_argument("--postgres", default=None, metavar="SERVER_URL",
                        help="keep the stores on this Postgres server, one database per size "
                        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432), not in SQLite")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per command")
    parser.add_argument("--only", default=None, help="only these measurements (comma-separated)")
    parser.add_argument("--build-only", action="store_true", help="build the stores, time nothing")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--overlap", action="store_true",
                        help="compare the approximate t-SNE with the exact one (first size)")
    parser.add_argument("--lineage-agreement", action="store_true",
                        help="compare `analyze lineage` at scale with the exact one (first size)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.models.split(",") if x]
    if args.big:
        sizes.append(100_000)
    only = set(args.only.split(",")) if args.only else None
    global POSTGRES
    POSTGRES = args.postgres
    results: dict[int, dict] = {}
    for n in sizes:
        home = args.cache / f"{'pg-' if POSTGRES else ''}{n}x{args.texts}"
        if not (home / "built.json").exists():
            shutil.rmtree(home, ignore_errors=True)
            if POSTGRES:
                _fresh_database(home)
            _say(f"building {n:,} models x {args.texts:,} texts in {home}")
            info = build_store(home, n, args.texts)
            _say(f"  built in {info['build_s']:.0f} s, {store_gb(home):.2f} GB")
        if args.build_only:
            continue
        if args.lineage_agreement:
            _say(f"lineage, kNN against every pair, on {n:,} models")
            print(json.dumps(lineage_agreement(home)))
            return 0
        if args.overlap:
            _say(f"t-SNE overlap on {n:,} models")
            print(json.dumps(map_overlap(home)))
            return 0
        _say(f"measuring {n:,} models")
        results[n] = measure(home, args.texts, args.timeout, only)
        if args.json:
            args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    if results:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
