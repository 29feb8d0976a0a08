"""The CLI: round trips through the store, one-line errors, exit codes, --db."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_textset_roundtrip(cli, db_url, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "hi", "response": "hello"}\n{"prompt": "a", "response": "b"}\n')
    r = cli("--db", db_url, "textset", "import", str(path), "--name", "greet")
    assert r.exit_code == 0, r.stderr
    assert "imported: greet (pairs, 2 items" in r.stderr
    r = cli("--db", db_url, "textset", "import", str(path), "--name", "greet")
    assert r.exit_code == 0 and "already stored" in r.stderr
    r = cli("--db", db_url, "textset", "list", "--json")
    rows = json.loads(r.stdout)
    assert [(x["name"], x["kind"], x["size"]) for x in rows] == [("greet", "pairs", 2)]
    r = cli("--db", db_url, "textset", "show", "greet", "--json")
    assert json.loads(r.stdout)["items"][0] == {"prompt": "hi", "response": "hello", "index": 0}
    r = cli("--db", db_url, "status", "--json")
    info = json.loads(r.stdout)
    assert info["textsets"][0]["name"] == "greet" and info["models"]["scored"] == 0
    r = cli("--db", db_url, "models", "list", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


def test_default_store_lives_in_atlas_home(cli, atlas_home):
    r = cli("status")
    assert r.exit_code == 0
    assert (atlas_home / "atlas.db").exists()
    assert str(atlas_home) in r.stdout


def test_errors_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    cases = [
        (("textset", "import", str(bad)), 5, "invalid JSON"),
        (("textset", "show", "missing"), 4, "no text set named 'missing'"),
        (("models", "list", "--status", "bogus"), 2, "unknown status"),
        (("--db", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "status"), 3, "cannot open database"),
    ]
    for args, code, message in cases:
        r = cli(*args)
        assert r.exit_code == code, (args, r.stderr)
        assert message in r.stderr
        assert "Traceback" not in r.stderr
        assert r.stderr.splitlines()[0].startswith("error:")
        assert "pw" not in r.stderr


def test_console_script_end_to_end(tmp_path):
    """The installed `atlas` entry point, as a user runs it."""
    env = {**os.environ, "ATLAS_HOME": str(tmp_path / "home")}
    exe = [sys.executable, "-m", "atlas"]
    r = subprocess.run([*exe, "textset", "show", "nope"], capture_output=True, text=True, env=env)
    assert r.returncode == 4 and "Traceback" not in r.stderr
    r = subprocess.run([*exe, "--help"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "textset" in r.stdout


def test_the_cli_imports_no_heavy_backend() -> None:
    """`atlas --help` stays fast: torch, transformers, faiss, openTSNE, matplotlib load lazily."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "faiss", "openTSNE", "matplotlib", "sklearn")
    code = (
        "import sys, atlas.cli; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
