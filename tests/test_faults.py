"""Faults against the local Hub: kill -9 soak, one writer per store, bad listing entries, -q."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _sync_hub import PIECES_PER_MODEL, TINY, add_tiny, atlas_cmd, specs, subprocess_env
from sqlmodel import select

from atlas.space import matrices
from atlas.store import Store
from atlas.store.tables import VARIANTS, HubModel, SyncRun, Vector
from atlas.testing.demo_hub import EXPECTED
from atlas.testing.hub import LocalHub

GOOD = ["atlas-zoo/llama-base", "atlas-zoo/llama-chat-a", "atlas-zoo/qwen-base",
        "atlas-zoo/qwen-chat-a", "atlas-zoo/qwen-chat-b"]  # fmt: skip
# A few tiny models for the soak: three good ones, the NaN one, one skipped without a download.
SOAK = ["atlas-zoo/llama-base", "atlas-zoo/llama-chat-a", "atlas-zoo/qwen-chat-a", "atlas-zoo/nan",
        "community/giant-72b"]  # fmt: skip
SOAK_GOOD = [r for r in SOAK if EXPECTED[r] == ("scored", None)]


def _serve(tmp_path: Path, zoo_models, only, extra=()) -> LocalHub:
    hub = LocalHub([*specs(tmp_path / "repos", zoo_models, only), *extra], page_size=4)
    hub.start()
    return hub


def _pieces(url: str) -> dict[str, list[tuple[str, str, str]]]:
    store = Store(url)
    try:
        with store.session() as s:
            rows = s.exec(
                select(HubModel.repo_id, Vector.variant, Vector.kind, Vector.revision)
                .join(Vector, Vector.model_id == HubModel.id)
            ).all()
    finally:
        store.close()
    out: dict[str, list[tuple[str, str, str]]] = {}
    for repo, variant, kind, revision in rows:
        out.setdefault(repo, []).append((variant, kind, revision))
    return out


def _runs(url: str) -> list[str]:
    store = Store(url)
    try:
        with store.session() as s:
            return [r.status for r in s.exec(select(SyncRun).order_by(SyncRun.id))]
    finally:
        store.close()


def _assert_nothing_partial_visible(url: str, scored: list[str]) -> None:
    """Every readable matrix holds exactly the scored models; each has all its pieces once."""
    store = Store(url)
    try:
        rows = {m.repo_id: m for m in store.models()}
        for variant in VARIANTS:
            for kind in ("conditional", "pmi"):
                m = matrices.load(store, TINY, variant, kind)
                assert sorted(x.repo_id for x in m.models) == sorted(scored), (variant, kind)
        m = matrices.load(store, TINY, "base", "unconditional")
        assert sorted(x.repo_id for x in m.models) == sorted(scored)
        pieces = _pieces(url)
        for repo in scored:
            keys = [(v, k) for v, k, rev in pieces[repo] if rev == rows[repo].revision]
            assert len(keys) == len(set(keys)) == PIECES_PER_MODEL, (repo, pieces[repo])
    finally:
        store.close()


# --- kill -9 soak -----------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_soak_then_one_sync_scores_every_good_model(db_url, tmp_path, zoo_models) -> None:
    """At least 10 kill -9 at random moments of `atlas sync`; then one plain sync finishes."""
    seed = int(os.environ.get("ATLAS_SOAK_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    hub = _serve(tmp_path, zoo_models, SOAK)
    url = db_url
    add_tiny(url)
    env = subprocess_env(tmp_path / "home", hub.endpoint)
    sqlite_file = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite") else None
    kills, finished, phases = 0, 0, []
    started = time.monotonic()
    try:
        while kills < 10 and time.monotonic() - started < 150:
            # Where to kill: a random time after the poll began, or a random time after a
            # random milestone of a model's processing (download, load and forward pass).
            milestone = rng.choice(["polling", "[", "downloading", "loading", "loading"])
            delay = rng.uniform(0.0, 2.5 if milestone == "polling" else 0.6)
            proc = subprocess.Popen(atlas_cmd("--db", url, "sync", "--textset", TINY), env=env,
                                    text=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            seen = threading.Event()

            def watch(proc=proc, seen=seen, milestone=milestone) -> None:
                for line in proc.stderr:
                    if milestone in line:
                        seen.set()
                seen.set()

            reader = threading.Thread(target=watch, daemon=True)
            reader.start()
            seen.wait(timeout=120)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                phases.append(f"{milestone}+{delay:.2f}")
            else:
                finished += 1
            proc.wait(timeout=60)
            reader.join(timeout=10)
        assert kills >= 10, f"seed {seed}: only {kills} kills ({finished} runs finished first)"
        if sqlite_file is not None:
            with sqlite3.connect(sqlite_file) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert len(_runs(url)) == kills + finished
        # Between kills, nothing partial is visible: only models marked scored are read.
        store = Store(url)
        visible = [m.repo_id for m in store.models("scored")]
        store.close()
        _assert_nothing_partial_visible(url, visible)

        done = subprocess.run(atlas_cmd("--db", url, "sync", "--textset", TINY, "--json"), env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, f"seed {seed}: {done.stderr[-3000:]}"
        store = Store(url)
        rows = {m.repo_id: (m.status, m.reason) for m in store.models()}
        store.close()
        runs = _runs(url)
        assert rows == {r: EXPECTED[r] for r in SOAK}, f"seed {seed}, kills at {phases}"
        assert runs.count("interrupted") == kills and runs[-1] == "ok"
        _assert_nothing_partial_visible(url, SOAK_GOOD)
        assert set(_pieces(url)) == set(SOAK_GOOD)  # the NaN model kept nothing
        if sqlite_file is not None:
            with sqlite3.connect(sqlite_file) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        hub.stop()
    print(f"soak seed {seed}: {kills} kills ({', '.join(phases)}), "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip


# --- one writer per store ---------------------------------------------------------------------


@pytest.mark.slow
def test_score_and_a_second_sync_beside_a_sync(tmp_path, zoo_models) -> None:
    """Different ATLAS_HOMEs, one SQLite file: the second writer exits 6, nothing is hurt."""
    only = GOOD[:3]
    hub = _serve(tmp_path, zoo_models, only)
    url = f"sqlite:///{tmp_path / 'shared' / 'atlas.db'}"
    add_tiny(url)
    env_a = subprocess_env(tmp_path / "home-a", hub.endpoint)
    env_b = subprocess_env(tmp_path / "home-b", hub.endpoint)
    try:
        sync = subprocess.Popen(atlas_cmd("--db", url, "sync", "--textset", TINY), env=env_a,
                                text=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        for line in sync.stderr:
            if line.startswith("[1/"):
                break
        others = [
            ("--db", url, "score", only[0], "--textset", TINY, "--force"),
            ("--db", url, "sync", "--textset", TINY),
            ("--db", url, "nearest", only[1], "-t", TINY, "--add"),
        ]
        for args in others:
            second = subprocess.run(atlas_cmd(*args), env=env_b, capture_output=True, text=True,
                                    timeout=120)  # fmt: skip
            assert second.returncode == 6, second.stderr
            assert second.stderr.startswith("error: another atlas writer"), second.stderr
            assert "Traceback" not in second.stderr
        rest = sync.stderr.read()
        assert sync.wait(timeout=300) == 0, rest[-2000:]
        store = Store(url)
        rows = {m.repo_id: (m.status, m.reason) for m in store.models()}
        store.close()
        assert _runs(url) == ["ok"]
        assert rows == dict.fromkeys(only, ("scored", None))
        _assert_nothing_partial_visible(url, only)
        assert not (tmp_path / "home-b" / "weights").exists()  # the refused ones fetched nothing
    finally:
        hub.stop()


# --- bad listing entries ----------------------------------------------------------------------


@pytest.mark.slow
def test_invalid_listed_ids_are_skipped_and_the_run_goes_on(cli, db_url, tmp_path, zoo_models,
                                                            monkeypatch) -> None:  # fmt: skip
    good = specs(tmp_path / "repos", zoo_models, ["atlas-zoo/llama-chat-a"])[0]
    bad = ["bad--org/model", "org/model..x", "org/" + "m" * 300, "org/white space"]
    extra = [dataclasses.replace(good, repo_id=r) for r in bad]
    hub = _serve(tmp_path, zoo_models, ["atlas-zoo/llama-chat-a"], extra)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    add_tiny(db_url)
    try:
        first = cli("--db", db_url, "sync", "--textset", TINY, "--json")
        assert first.exit_code == 0, first.stderr
        summary = json.loads(first.stdout)
        assert summary["scored_models"] == ["atlas-zoo/llama-chat-a"]
        assert summary["skipped"] == {"invalid-id": len(bad)}
        rows = json.loads(cli("--db", db_url, "models", "list", "--json").stdout)
        skipped = [r for r in rows if r["reason"] == "invalid-id"]
        assert len(skipped) == len(bad) and all(r["status"] == "skipped" for r in skipped)
        assert all(len(r["model"]) <= 256 for r in rows)
        assert any("m" * 200 in (r["detail"] or "") for r in skipped)  # the full id is kept
        again = cli("--db", db_url, "sync", "--textset", TINY, "--full", "--json")
        assert again.exit_code == 0, again.stderr
        assert json.loads(again.stdout)["skipped"] == {}  # not counted twice
        assert len(json.loads(cli("--db", db_url, "models", "list", "--json").stdout)) == len(rows)
    finally:
        hub.stop()


def test_an_invalid_id_already_queued_does_not_stop_the_sync(cli, tmp_path, monkeypatch) -> None:
    hub = LocalHub([])
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    add_tiny(url)
    store = Store(url)
    store.upsert_model("bad--org/model", status="queued", revision="a" * 40, source="hub")
    store.close()
    try:
        result = cli("--db", url, "sync", "--textset", TINY, "--json")
    finally:
        hub.stop()
    assert result.exit_code == 0, result.stderr
    store = Store(url)
    row = store.model("bad--org/model")
    store.close()
    assert (row.status, row.reason) == ("skipped", "invalid-id")


# --- -q ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quiet_silences_huggingface_hub_too(tmp_path, zoo_models) -> None:
    hub = _serve(tmp_path, zoo_models, ["atlas-zoo/llama-chat-a"])
    home = tmp_path / "home"
    add_tiny(f"sqlite:///{home / 'atlas.db'}")
    env = subprocess_env(home, hub.endpoint)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS")
    try:
        quiet = subprocess.run(
            atlas_cmd("-q", "score", "atlas-zoo/llama-chat-a", "-t", TINY),
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
        quiet_sync = subprocess.run(atlas_cmd("-q", "sync", "-t", TINY), env=env,
                                    capture_output=True, text=True, timeout=300)  # fmt: skip
        assert quiet_sync.returncode == 0 and quiet_sync.stderr == "", quiet_sync.stderr
    finally:
        hub.stop()


# --- one retry policy: a permanently broken file costs a handful of requests -----------------


@pytest.mark.slow
def test_a_weight_file_answering_500_forever_is_bounded(cli, tmp_path, zoo_models,
                                                        monkeypatch) -> None:  # fmt: skip
    from atlas.hub import client

    repo = "atlas-zoo/llama-chat-a"
    hub = _serve(tmp_path, zoo_models, [repo])
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    add_tiny(f"sqlite:///{tmp_path / 'atlas-home' / 'atlas.db'}")
    weights = f"/{repo}/resolve/*/model.safetensors"
    hub.faults.add(weights, 500, times=10**6)  # HEAD and GET, forever
    try:
        started = time.monotonic()
        result = cli("sync", "--textset", TINY, "--json")
        seconds = time.monotonic() - started
    finally:
        hub.stop()
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["failed_models"] == {repo: "download-error"}
    asked = hub.requests_to(weights)
    attempts = len(client.RETRY_DELAYS) + 1
    # One policy applied once: each attempt asks for the file a few times at most (the HEAD that
    # huggingface_hub itself retries, then no GET), never the 84 requests of nested retries.
    assert 1 <= len(asked) <= 3 * attempts, [(r.method, r.status) for r in asked]
    assert seconds < 60, seconds
    print(f"permanently broken file: {len(asked)} requests, {seconds:.1f} s")


def test_hub_retry_delays_come_from_the_environment(monkeypatch) -> None:
    from atlas import settings
    from atlas.errors import UsageError

    monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", "1, 2.5")
    assert settings.hub_retry_delays((0.5,)) == (1.0, 2.5)
    monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", "")
    assert settings.hub_retry_delays((0.5,)) == ()
    monkeypatch.delenv("ATLAS_HUB_RETRY_DELAYS")
    assert settings.hub_retry_delays((0.5, 2.0)) == (0.5, 2.0)
    for bad in ("soon", "1,-1", "nan"):
        monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", bad)
        with pytest.raises(UsageError, match="ATLAS_HUB_RETRY_DELAYS"):
            settings.hub_retry_delays((0.5,))
