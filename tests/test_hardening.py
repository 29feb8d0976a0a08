"""Hardening: partial vectors never read, clean one-line errors, safe terminal text (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _vectorstore import clustered, make_textset, put_matrix, put_vector
from sqlalchemy import inspect, text

from atlas.errors import ModelFailure
from atlas.scoring import loading
from atlas.scoring import service as scoring
from atlas.settings import Settings
from atlas.space import matrices
from atlas.store import Store
from atlas.store.locking import lock_path, store_lock
from atlas.textsets import MAX_ITEM_CHARS, Item, import_items


def dump(url: str) -> dict[str, list]:
    """Every row of every table: a store compared before and after a refused command."""
    store = Store(url, migrate=False)
    try:
        names = inspect(store.engine).get_table_names()
        with store.engine.connect() as conn:
            return {
                t: sorted(map(repr, conn.execute(text(f'SELECT * FROM "{t}"')).all()))
                for t in names
            }
    finally:
        store.close()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = error_lines(result.stderr)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(line.startswith(("error:", "hint:")) for line in lines), result.stderr
    return errors[0]


# --- item 1: vectors of a model that is not scored are never read -----------------------------


def test_only_scored_models_reach_matrices_indexes_and_maps(store) -> None:
    from atlas.space import maps
    from atlas.space.index import refresh_indexes
    from atlas.space.neighbours import nearest

    ts = make_textset(store, 12)
    rows = clustered(6, 12)
    put_matrix(store, ts, [f"org/m{i}" for i in range(6)], rows)
    # m4 was cut off while scoring, m5 failed: both keep a piece, neither may be read.
    store.set_status("org/m4", "scoring", "forward", "scoring 5 piece(s)")
    store.set_status("org/m5", "failed", "interrupted")
    loaded = matrices.load(store, ts)
    assert [m.repo_id for m in loaded.models] == [f"org/m{i}" for i in range(4)]
    np.testing.assert_allclose(loaded.values, rows[:4], rtol=1e-6)
    assert set(matrices.stamps(store, ts, "base", "conditional")) == {
        m.id for m in loaded.models
    }
    settings = Settings.from_env(database_url=store.url)
    refreshed = refresh_indexes(store, settings, ts.name)
    assert refreshed
    found = nearest(store, settings, "org/m0", 10, textset=ts.name)
    assert {n.model for n in found} == {"org/m1", "org/m2", "org/m3"}
    with pytest.raises(Exception, match="no conditional vectors"):
        nearest(store, settings, "org/m5", 3, textset=ts.name)
    snap = maps.refresh(store, settings, method="pca", textset=ts.name).snapshot
    assert snap.n_models == 4
    # The cut-off model finishes: it becomes visible, and the index notices without a rebuild.
    store.set_status("org/m4", "scored")
    assert len(matrices.load(store, ts).models) == 5
    assert refresh_indexes(store, settings, ts.name)
    assert "org/m4" in {n.model for n in nearest(store, settings, "org/m0", 10, textset=ts.name)}


def test_scored_only_when_every_requested_piece_is_stored(store) -> None:
    ts = make_textset(store, 4)
    put_vector(store, ts, "org/a", np.arange(4.0) - 9)
    store.set_status("org/a", "scoring", "forward")
    missing = store.finish_scoring(
        "org/a", revision="r1", textset=ts,
        pieces=[("base", "conditional"), ("cot", "conditional")],
    )  # fmt: skip
    assert missing == [("cot", "conditional")]
    assert store.model("org/a").status == "scoring"
    put_vector(store, ts, "org/a", np.arange(4.0) - 8, variant="cot")
    store.set_status("org/a", "scoring", "forward")
    assert store.finish_scoring(
        "org/a", revision="r1", textset=ts,
        pieces=[("base", "conditional"), ("cot", "conditional")],
    ) == []  # fmt: skip
    assert store.model("org/a").status == "scored"


def test_kills_count_only_in_the_forward_pass(store, zoo_by_name) -> None:
    folder = str(zoo_by_name["atlas-zoo/llama-chat-a"].path)
    tiny = [Item(prompt=f"Question {i}?", response=f"Answer {i}.") for i in range(3)]
    import_items(store, "t3", tiny)
    name = "killed-often"
    revision = loading.local_revision(Path(folder))
    # Killed twice while downloading or loading: not the model's fault, it is scored.
    store.upsert_model(name, status="scoring", reason="load", detail="loading",
                       attempts=2, revision=revision, source="local")  # fmt: skip
    summary = scoring.score_model(store, folder, "t3", name=name, variants="base")
    assert summary.computed and store.model(name).status == "scored"
    assert store.model(name).attempts == 0
    # Died in the forward pass for the third time in a row: fails `interrupted`, nothing kept.
    store.upsert_model(name, status="scoring", reason="forward", attempts=2)
    with pytest.raises(ModelFailure, match="forward pass"):
        scoring.score_model(store, folder, "t3", name=name, variants="base", force=True)
    row = store.model(name)
    assert (row.status, row.reason) == ("failed", "interrupted")
    assert matrices.load(store, "t3").models == []
    # A stored piece is progress: the count starts again.
    assert scoring.forward_deaths(row) == 0


# --- item 2: the lock lives beside the SQLite file --------------------------------------------


def test_lock_is_beside_the_database_whatever_atlas_home(tmp_path, monkeypatch, cli) -> None:
    url = f"sqlite:///{tmp_path / 'shared' / 'atlas.db'}"
    store = Store(url)
    try:
        path = lock_path(store)
        assert path == (tmp_path / "shared" / "atlas.db.lock").resolve()
        before = dump(url)
        with store_lock(store, settings=Settings(home=tmp_path / "home-a")):
            monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "home-b"))
            monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never reached
            line = assert_one_line(cli("--db", url, "sync"), 6)
            assert "another atlas writer" in line
            assert_one_line(cli("--db", url, "score", "org/model", "--force"), 6)
        assert dump(url) == before
    finally:
        store.close()


def test_score_and_nearest_add_take_the_writer_lock(cli, db_url, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    store = Store(db_url)
    try:
        before = dump(db_url)
        with store_lock(store):
            assert_one_line(cli("--db", db_url, "score", "org/model"), 6)
            make_textset(store, 3, "t")
            put_vector(store, store.textset("t"), "org/known", np.arange(3.0))
            before = dump(db_url)
            assert_one_line(cli("--db", db_url, "nearest", "org/other", "-t", "t", "--add"), 6)
        assert dump(db_url) == before
    finally:
        store.close()


# --- item 5: options are checked before the store or the network ------------------------------


@pytest.mark.parametrize(
    "option",
    [("--device", "tpu"), ("--dtype", "int8"), ("--device", "cuda:7"), ("--device", "cuda")],
)
def test_bad_option_changes_nothing(cli, db_url, monkeypatch, option) -> None:
    import torch

    if option == ("--device", "cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any network use would fail
    store = Store(db_url)
    ts = make_textset(store, 3, "t")
    put_vector(store, ts, "org/scored", np.arange(3.0))
    store.close()
    before = dump(db_url)
    line = assert_one_line(cli("--db", db_url, "score", "org/scored", "--force", *option), 2)
    assert option[1] in line
    assert_one_line(cli("--db", db_url, "sync", *option), 2)
    assert dump(db_url) == before


# --- item 6: credentials never printed --------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg//root:Secret1@127.0.0.1/x",  # no scheme colon: unparseable
        "postgresql+psycopg://root:Secret1@127.0.0.1:9/x",  # well-formed, nothing listening
        "postgresql+psycopg://root:Secret1@127.0.0.1:port/x",  # non-numeric port
        "postgresql+psycopg://root:Secret1@127.0.0.1:99999/x",
        "nosuchdb://root:Secret1@host/x",
    ],
)
def test_password_is_never_printed(cli, url) -> None:
    for args in (("status",), ("db", "current"), ("models", "list")):
        result = cli("--db", url, *args)
        assert_one_line(result, 3)
        assert "Secret1" not in result.stderr + result.stdout
        assert "***" in result.stderr or "invalid database URL" in result.stderr


def test_token_never_printed(cli, monkeypatch, tmp_path) -> None:
    token = "hf_abcdefghijklmnopqrstuvwxyz123456"
    monkeypatch.setenv("HF_TOKEN", token)
    result = cli("--db", f"sqlite:///{tmp_path}/x/{token}/atlas.db", "textset", "show", token)
    assert result.exit_code == 4 and token not in result.stderr + result.stdout


# --- items 4 and 7: bad input, one line, the right exit code, the store unchanged -------------


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


BAD_FILES = {
    "lone-surrogate.jsonl": ('{"prompt": "a\\ud800", "response": "b"}\n', "lone surrogate"),
    "nested.jsonl": ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "nested too deeply"),
    "nul.jsonl": ('{"prompt": "a\\u0000b", "response": "c"}\n', "NUL"),
    "huge.jsonl": (
        json.dumps({"prompt": "p", "response": "x" * (MAX_ITEM_CHARS + 1)}) + "\n",
        f"more than the {MAX_ITEM_CHARS:,}",
    ),
    "huge-line.jsonl": ('{"text": "' + "\\u0041" * MAX_ITEM_CHARS + '"}\n', "a line of"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_text_set_files(cli, db_url, tmp_path, name) -> None:
    content, expected = BAD_FILES[name]
    good = json.dumps({"prompt": "fine", "response": "fine"})
    path = _write(tmp_path / name, good + "\n" + content)
    Store(db_url).close()
    before = dump(db_url)
    line = assert_one_line(cli("--db", db_url, "textset", "import", str(path)), 5)
    assert expected in line and f"{name}:2" in line  # names the line
    assert dump(db_url) == before


def test_duplicate_items_warn(cli, db_url, tmp_path) -> None:
    row = json.dumps({"prompt": "same", "response": "same"})
    path = _write(tmp_path / "dups.jsonl", "\n".join([row, row, row]) + "\n")
    result = cli("--db", db_url, "textset", "import", str(path))
    assert result.exit_code == 0 and "warning: 2 item(s) repeat" in result.stderr


def test_long_names_are_refused_on_every_backend(cli, db_url, tmp_path, zoo_by_name) -> None:
    Store(db_url).close()
    before = dump(db_url)
    folder = str(zoo_by_name["atlas-zoo/llama-base"].path)
    assert_one_line(cli("--db", db_url, "score", folder, "--name", "n" * 300), 2)
    path = _write(tmp_path / "ok.jsonl", json.dumps({"text": "hello"}) + "\n")
    assert_one_line(cli("--db", db_url, "textset", "import", str(path), "--name", "n" * 300), 5)
    assert_one_line(cli("--db", db_url, "textset", "import", str(path), "--name", "a\x00b"), 5)
    assert dump(db_url) == before


def test_store_that_cannot_be_used(cli, tmp_path, monkeypatch) -> None:
    not_db = _write(tmp_path / "not.db", b"this is not a database at all" * 100)
    assert "database" in assert_one_line(cli("--db", f"sqlite:///{not_db}", "status"), 3)
    assert not_db.read_bytes() == b"this is not a database at all" * 100

    good = f"sqlite:///{tmp_path / 'ro.db'}"
    Store(good).close()
    before = dump(good)
    path = _write(tmp_path / "ok.jsonl", json.dumps({"text": "hello"}) + "\n")
    readonly = f"sqlite:///file:{tmp_path / 'ro.db'}?mode=ro&uri=true"
    assert cli("--db", readonly, "status").exit_code == 0  # reading works
    line = assert_one_line(cli("--db", readonly, "textset", "import", str(path)), 3)
    assert "readonly" in line or "read-only" in line
    assert dump(good) == before

    home_file = _write(tmp_path / "home-is-a-file", "x")
    monkeypatch.setenv("ATLAS_HOME", str(home_file))
    assert "is a file" in assert_one_line(cli("status"), 3)
    monkeypatch.setenv("ATLAS_HOME", "/proc/atlas-cannot-be-here")
    assert "ATLAS_HOME" in assert_one_line(cli("status"), 3)


def test_full_disk_is_one_line(tmp_path) -> None:
    """A file-size limit makes SQLite's writes fail as on a full disk."""
    import resource

    url = f"sqlite:///{tmp_path / 'small.db'}"
    Store(url).close()
    size = (tmp_path / "small.db").stat().st_size
    rows = "\n".join(json.dumps({"text": f"{i} " + "y" * 2000}) for i in range(2000))
    path = _write(tmp_path / "big.jsonl", rows + "\n")
    before = dump(url)

    def limit() -> None:
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 65536, size + 65536))

    env = dict(os.environ, ATLAS_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-m", "atlas", "--db", url, "textset", "import", str(path)],
        capture_output=True, text=True, env=env, preexec_fn=limit, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = error_lines(done.stderr)
    assert lines[0].startswith("error:") and "Traceback" not in done.stderr
    assert dump(url) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "0", "-5B"])
def test_max_params_must_be_a_finite_positive_count(cli, value) -> None:
    assert "--max-params" in assert_one_line(cli("sync", "--max-params", value, "--dry-run"), 2)


@pytest.mark.parametrize("k", ["0", "-1", "10001", str(10**12)])
def test_k_is_bounded(cli, store, k) -> None:
    ts = make_textset(store, 3, "t")
    put_vector(store, ts, "org/a", np.arange(3.0))
    assert "-k" in assert_one_line(cli("--db", store.url, "nearest", "org/a", "-k", k), 2)


# --- item 8: stored strings are text, never markup or terminal controls ------------------------

HOSTILE = ["[/]", "[bold red]x[/]", "evil\u202egpj.exe", "bell\x07\x1b[31mred", "[link=x]y"]


def test_hostile_names_through_every_table_command(cli, db_url, tmp_path) -> None:
    store = Store(db_url)
    try:
        for i, name in enumerate(HOSTILE):
            ts = import_items(store, name, [Item(prompt=name, response=f"r {name}")]).textset
            put_vector(store, ts, name, np.array([-1.0 - i]), model_type=name)
            store.upsert_model(name, reason=name, detail=name)
            store.set_status(name, "failed", name, name)
    finally:
        store.close()
    commands = [
        ("models", "list"), ("status",), ("textset", "list"),
        *[("textset", "show", name) for name in HOSTILE],
        ("nearest", HOSTILE[0], "-t", HOSTILE[0]),  # an error naming the model
        ("textset", "show", "[/]missing"),  # the error printer
    ]  # fmt: skip
    for args in commands:
        result = cli("--db", db_url, *args)
        out = result.stdout + result.stderr
        assert "MarkupError" not in out and "Traceback" not in out, (args, out)
        assert result.exit_code in (0, 4), (args, out)
        for bad in ("\u202e", "\x07", "\x1b"):
            assert bad not in out, (args, out)
    listed = cli("--db", db_url, "models", "list").stdout
    assert "[/]" in listed and "[bold red]x[/]" in listed and "\\u202e" in listed
    shown = cli("--db", db_url, "textset", "show", "[/]")
    assert "user: [/]" in shown.stdout
    missing = cli("--db", db_url, "textset", "show", "[/]missing")
    assert "no text set named '[/]missing'" in missing.stderr


def test_error_printer_survives_markup_in_messages(cli) -> None:
    result = cli("textset", "show", "[bold red]x[/]\u202e")
    assert result.exit_code == 4
    assert "[bold red]x[/]\\u202e" in result.stderr and "\u202e" not in result.stderr


def test_pieces_left_by_a_failed_run_are_never_read(store) -> None:
    ts = make_textset(store, 5)
    put_vector(store, ts, "org/ok", np.arange(5.0) - 10)
    put_vector(store, ts, "org/half", np.arange(5.0) - 20)
    store.set_status("org/half", "queued")
    loaded = matrices.load(store, ts)
    assert [m.repo_id for m in loaded.models] == ["org/ok"] and loaded.values.shape == (1, 5)
    assert store.high_water_mark()[0] == 1  # the index sees only readable pieces
