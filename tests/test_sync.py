"""`atlas sync` end to end against the local Hub serving the zoo, on SQLite and Postgres."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime, timezone

import pytest
from _sync_hub import PIECES_PER_MODEL, TINY, add_tiny, atlas_cmd, start_hub, subprocess_env
from huggingface_hub import constants
from sqlmodel import func, select

from atlas.store import Store
from atlas.store.locking import store_lock
from atlas.store.tables import HubModel, SyncRun, Vector
from atlas.testing.demo_hub import EXPECTED
from atlas.testing.hub import LocalHub

SCORED = sorted(r for r, (s, _) in EXPECTED.items() if s == "scored")
NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", "0.05,0.05,0.05")


def _sync(cli, db_url, *args):
    result = cli("--db", db_url, "sync", "--textset", TINY, *args)
    assert result.exit_code == 0, result.stderr
    return result


def _vector_counts(url: str) -> dict[str, int]:
    store = Store(url)
    try:
        with store.session() as s:
            rows = s.exec(
                select(HubModel.repo_id, func.count(Vector.id))
                .join(Vector, Vector.model_id == HubModel.id)
                .group_by(HubModel.repo_id)
            ).all()
        return {repo: int(n) for repo, n in rows}
    finally:
        store.close()


@pytest.mark.slow
def test_sync_twice_end_to_end(cli, db_url, tmp_path, zoo_models, monkeypatch) -> None:
    hub = start_hub(tmp_path / "repos", zoo_models, page_size=4)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    add_tiny(db_url)
    try:
        first = _sync(cli, db_url, "--json")
        summary = json.loads(first.stdout)
        assert summary["discovered"] == summary["new"] == len(EXPECTED)
        assert sorted(summary["scored_models"]) == SCORED
        assert summary["failed_models"] == {
            "atlas-zoo/broken-template": "template-mismatch", "atlas-zoo/nan": "non-finite"
        }  # fmt: skip
        skipped = Counter(r for s, r in EXPECTED.values() if s == "skipped")
        assert summary["skipped"] == dict(skipped)
        assert "polling" in first.stderr and "scored in" in first.stderr  # progress on stderr

        listed = cli("--db", db_url, "models", "list", "--json")
        rows = {r["model"]: r for r in json.loads(listed.stdout)}
        assert {m: (r["status"], r["reason"]) for m, r in rows.items()} == EXPECTED
        assert rows["atlas-zoo/qwen-chat-b"]["base_models"] == ["atlas-zoo/qwen-base"]
        only_skipped = json.loads(cli("--db", db_url, "models", "list", "--status", "skipped",
                                      "--json").stdout)  # fmt: skip
        assert all(r["reason"] and r["detail"] for r in only_skipped)
        assert _vector_counts(db_url) == dict.fromkeys(SCORED, PIECES_PER_MODEL)

        hub.clear_requests()
        second = _sync(cli, db_url, "--json")
        again = json.loads(second.stdout)
        assert again["nothing_new"] and again["incremental"]
        assert again["scored"] == again["failed"] == again["new"] == 0
        assert "nothing new" in second.stderr
        listing = hub.requests_to("/api/models")
        assert len(listing) == 2 and not any("cursor" in r.query for r in listing)
        assert not hub.requests_to("*/resolve/*")  # nothing downloaded
        assert _vector_counts(db_url) == dict.fromkeys(SCORED, PIECES_PER_MODEL)

        status = json.loads(cli("--db", db_url, "status", "--json").stdout)
        assert status["last_sync"]["status"] == "ok"
        assert status["models"]["scored"] == len(SCORED)
        store = Store(db_url)
        runs = [(r.status, r.counts["scored"]) for r in _runs(store)]
        store.close()
        assert runs == [("ok", len(SCORED)), ("ok", 0)]
        # weights are deleted after scoring
        weights = tmp_path / "atlas-home" / "weights"
        assert not weights.exists() or not any(weights.rglob("*.safetensors"))
    finally:
        hub.stop()


def _runs(store: Store) -> list[SyncRun]:
    with store.session() as s:
        return list(s.exec(select(SyncRun).order_by(SyncRun.id)))


def test_lock_held_makes_a_second_sync_exit_6(cli, db_url, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never reached
    store = Store(db_url)
    try:
        with store_lock(store):
            result = cli("--db", db_url, "sync")
        assert result.exit_code == 6
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "another atlas writer" in lines[0] and "is running" in lines[0]
        assert _runs(store) == []
        # released: the lock can be taken again
        with store_lock(store):
            pass
    finally:
        store.close()


@pytest.mark.slow
def test_rescore_updated_and_limit(cli, tmp_path, zoo_models, monkeypatch) -> None:
    only = ["atlas-zoo/llama-chat-a", "atlas-zoo/qwen-chat-a", "atlas-zoo/llama-base"]
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    add_tiny(url)
    try:
        # --limit: one model now, the rest wait in the queue for the next run
        first = json.loads(_sync(cli, url, "--limit", "1", "--json").stdout)
        assert first["scored"] == 1 and first["remaining"] == 2
        second = json.loads(_sync(cli, url, "--json").stdout)
        assert second["scored"] == 2 and second["new"] == 0
        repo = "atlas-zoo/llama-chat-a"
        old = hub.sha(repo)
        folder = tmp_path / "edited"
        shutil.copytree(hub._get("model", repo).spec.folder, folder)
        (folder / "README.md").write_text((folder / "README.md").read_text() + "\nv2\n")
        new = hub.update(repo, folder=folder, last_modified=NOW)
        # noticed, but not rescored by default: the old vectors stay
        third = json.loads(_sync(cli, url, "--json").stdout)
        assert third["updated"] == 1 and third["scored"] == 0
        store = Store(url)
        assert store.model(repo).revision == new and store.model(repo).status == "scored"
        fourth = json.loads(_sync(cli, url, "--rescore-updated", "--json").stdout)
        assert fourth["scored_models"] == [repo]
        revisions = {v.revision for v in store.vector_pieces(
            textset_id=store.textset(TINY).id, model_id=store.model(repo).id)}  # fmt: skip
        assert revisions == {old, new}
        assert _vector_counts(url)[repo] == 2 * PIECES_PER_MODEL
        store.close()
        fifth = json.loads(_sync(cli, url, "--rescore-updated", "--json").stdout)
        assert fifth["nothing_new"]
    finally:
        hub.stop()


@pytest.mark.slow
def test_faults_are_survived_and_a_hopeless_repo_fails(
    cli, tmp_path, zoo_models, monkeypatch
) -> None:
    monkeypatch.setenv("ATLAS_HUB_RETRY_DELAYS", "0.05,0.05,0.05")  # the policy, only faster
    only = [
        "atlas-zoo/llama-base", "atlas-zoo/qwen-base", "atlas-zoo/llama-chat-a",
        "atlas-zoo/qwen-chat-b",
    ]  # fmt: skip
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    add_tiny(url)
    faults = hub.faults
    faults.add("/api/models/atlas-zoo/llama-base/revision/*", 500, times=2)
    faults.add("/atlas-zoo/qwen-base/resolve/*/config.json", "slow", times=1, delay=2.5)
    faults.add("/atlas-zoo/llama-chat-a/resolve/*/model.safetensors", "truncate", times=2,
               method="GET", after_bytes=4096)  # fmt: skip
    faults.add("/api/models", 503, times=1)  # huggingface_hub retries listings itself
    faults.add("/api/models/atlas-zoo/qwen-chat-b/revision/*", 502, times=10**6)
    try:
        result = _sync(cli, url, "--json")
        summary = json.loads(result.stdout)
        assert sorted(summary["scored_models"]) == sorted(only[:3])
        assert summary["failed_models"] == {"atlas-zoo/qwen-chat-b": "download-error"}
        counts = _vector_counts(url)
        assert counts == dict.fromkeys(only[:3], PIECES_PER_MODEL)  # nothing lost
        store = Store(url)
        failed = store.model("atlas-zoo/qwen-chat-b")
        assert (failed.status, failed.reason) == ("failed", "download-error")
        run = _runs(store)[-1]
        assert run.status == "ok" and run.errors == ["atlas-zoo/qwen-chat-b: download-error"]
        store.close()
        # every fault fired: the 500s, the slow answers, the cut-offs
        statuses = [
            r.status for r in hub.requests_to("/api/models/atlas-zoo/llama-base/revision/*")
        ]
        assert statuses[:3] == [500, 500, 200]
        cut = hub.requests_to("/atlas-zoo/llama-chat-a/resolve/*/model.safetensors", "GET")
        assert len(cut) >= 3
        slow = hub.requests_to("/atlas-zoo/qwen-base/resolve/*/config.json")
        assert len(slow) >= 2  # the first answer came too late and was asked again
        assert "retrying" in result.stderr
        # Once the Hub behaves, --retry-failed scores the model that failed to download.
        faults.clear()
        assert json.loads(_sync(cli, url, "--json").stdout)["scored_models"] == []
        retried = json.loads(_sync(cli, url, "--retry-failed", "--json").stdout)
        assert retried["scored_models"] == ["atlas-zoo/qwen-chat-b"]
        assert _vector_counts(url) == dict.fromkeys(only[:4], PIECES_PER_MODEL)
    finally:
        hub.stop()


@pytest.mark.slow
def test_kill_9_mid_sync_then_resume_without_duplicates(tmp_path, zoo_models) -> None:
    only = [*SCORED[:4], "atlas-zoo/nan", "community/giant-72b"]
    expected = {repo: EXPECTED[repo] for repo in only}
    scored = [r for r in only if EXPECTED[r][0] == "scored"]
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'atlas.db'}"
    add_tiny(url)
    env = subprocess_env(home, hub.endpoint)
    try:
        proc = subprocess.Popen(atlas_cmd("sync", "--textset", TINY), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        store = Store(url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if store.status_counts().get("scored", 0) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        counts = store.status_counts()
        assert counts.get("scored", 0) < len(scored)
        assert _runs(store)[-1].status == "running"  # the killed run never finished

        done = subprocess.run(atlas_cmd("sync", "--textset", TINY, "--json"), env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        rows = {m.repo_id: (m.status, m.reason) for m in store.models()}
        assert rows == expected
        assert _vector_counts(url) == dict.fromkeys(scored, PIECES_PER_MODEL)  # no duplicates
        assert [r.status for r in _runs(store)] == ["interrupted", "ok"]
        store.close()
    finally:
        hub.stop()


def test_stop_flag_leaves_the_rest_queued(tmp_path, zoo_models, monkeypatch) -> None:
    from atlas import Atlas

    only = ["atlas-zoo/llama-base", "atlas-zoo/qwen-base", "atlas-zoo/llama-chat-a"]
    hub = start_hub(tmp_path / "repos", zoo_models, only)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    stop = threading.Event()

    def progress(message: str) -> None:
        if "scored in" in message:
            stop.set()

    try:
        with Atlas() as a:
            add_tiny(a.settings.url)
            summary = a.sync(textset=TINY, stop=stop, progress=progress, keep_weights=True)
            assert summary.stopped and len(summary.scored) == 1 and summary.remaining == 2
            assert a.store.status_counts() == {"scored": 1, "queued": 2}
            assert a.store.last_sync().status == "stopped"
            # --keep-weights kept the download
            assert list(a.settings.weights_dir.rglob("*.safetensors"))
            # dry run: decides and lists, writes nothing
            dry = a.sync(textset=TINY, dry_run=True)
            assert dry.dry_run and len(dry.would_score) == 2 and dry.run_id is None
            assert a.store.status_counts() == {"scored": 1, "queued": 2}
            rest = a.sync(textset=TINY)
            assert len(rest.scored) == 2 and not rest.new
    finally:
        hub.stop()


def test_unknown_text_set_and_bad_options(cli, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert cli("sync", "--textset", "nope").exit_code == 4
    assert cli("sync", "--max-params", "lots").exit_code == 2
    assert cli("sync", "--variants", "base,bogus").exit_code == 2


def test_hub_error_is_one_line_and_recorded(cli, monkeypatch, tmp_path) -> None:
    hub = LocalHub([])
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", f"{hub.endpoint}/no-such-hub")  # every route is a 404
    try:
        result = cli("sync")
    finally:
        hub.stop()
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "listing models" in errors[0]
    store = Store(f"sqlite:///{tmp_path / 'atlas-home' / 'atlas.db'}")
    run = _runs(store)[-1]
    assert run.status == "failed" and "listing models" in run.errors[0]
    store.close()


def _job(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"atlas_job_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sync_job_skips_quietly_when_another_sync_runs(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never reached
    store = Store(f"sqlite:///{tmp_path / 'atlas-home' / 'atlas.db'}")
    try:
        with store_lock(store):
            assert _job("sync").main([]) == 0
            assert "skipped: another atlas sync holds the lock" in capsys.readouterr().err
            assert _job("refresh_map").main() == 0
            assert "skipped" in capsys.readouterr().err
    finally:
        store.close()
    assert _job("export_snapshot").main([]) == 4  # no snapshot yet
