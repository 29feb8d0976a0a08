"""`atlas analyze ...` on the real tiny zoo, scored once per module into SQLite (and Postgres)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

PNG = b"\x89PNG\r\n\x1a\n"
TEXTSET = "tiny"
PAIRS = [
    ("What is two plus two?", "Two plus two is four."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
    ("How do I reverse a list in Python?", "Use slicing: `items[::-1]`."),
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind combs the dunes."),
    ("Explain recursion in one sentence.", "A function calling itself on smaller parts."),
    ("Is a tomato a fruit?", "Botanically, yes: a tomato is a fruit."),
    ("def add(a, b):", "    return a + b\n"),
]
SCORED = (
    "atlas-zoo/llama-base", "atlas-zoo/llama-chat-a", "atlas-zoo/llama-chat-b",
    "atlas-zoo/qwen-base", "atlas-zoo/qwen-chat-a", "atlas-zoo/qwen-chat-b",
)
VALIDATED = ("atlas-zoo/llama-base", "atlas-zoo/llama-chat-a", "atlas-zoo/qwen-base",
             "atlas-zoo/qwen-chat-a")


def _populate(url: str, zoo: dict, names: tuple[str, ...], tmp: Path) -> None:
    """Import the tiny text set, score `names` (all four variants), record their lineage."""
    from atlas import textsets
    from atlas.scoring import service as scoring
    from atlas.store import Store

    path = tmp / "tiny.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    store = Store(url)
    try:
        textsets.import_file(store, path, TEXTSET)
        for name in names:
            scoring.score_model(store, str(zoo[name].path), TEXTSET, name=name)
            if zoo[name].parent:  # what discovery records from the Hub's base_model tags
                store.upsert_model(name, base_models=[zoo[name].parent])
    finally:
        store.close()


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory, zoo_by_name) -> str:
    """A SQLite store with six zoo models scored on an 8-pair text set."""
    tmp = tmp_path_factory.mktemp("analyze")
    url = f"sqlite:///{tmp / 'atlas.db'}"
    _populate(url, zoo_by_name, SCORED, tmp)
    return url


def _raw(
    url: str, variant: str, kind: str = "conditional", *, clip: bool = True
) -> tuple[list[str], np.ndarray]:
    """Stored vectors straight from the store, clipped at their own 2% quantile by hand."""
    from atlas.space import matrices
    from atlas.store import Store

    store = Store(url)
    try:
        loaded = matrices.load(store, TEXTSET, variant, kind)
        models, L = loaded.models, loaded.values
    finally:
        store.close()
    L = L.astype(np.float64)
    return [m.repo_id for m in models], np.maximum(L, np.quantile(L, 0.02)) if clip else L


def _json(cli, url: str, *args: str) -> dict:
    result = cli("--db", url, "analyze", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_pmi_through_the_cli(cli, sqlite_url, tmp_path):
    data = _json(cli, sqlite_url, "pmi", "--textset", TEXTSET)
    names, cond = _raw(sqlite_url, "base")
    names_u, uncond = _raw(sqlite_url, "base", "unconditional")
    assert names == names_u and [r["model"] for r in data["models"]] == names
    pmi = cond - uncond
    mi = pmi.mean(axis=1)
    approx = ((pmi - pmi.mean(axis=1, keepdims=True)) ** 2).mean(axis=1) / 2
    assert [r["mi"] for r in data["models"]] == pytest.approx(mi, rel=1e-5)
    assert [r["variance_approx"] for r in data["models"]] == pytest.approx(approx, rel=1e-5)
    assert data["pearson"] == pytest.approx(np.corrcoef(mi, approx)[0, 1], abs=1e-6)
    assert data["table"][0]["textsets"][TEXTSET]["mean_conditional"] == pytest.approx(
        cond[0].mean(), rel=1e-5
    )
    plot = tmp_path / "pmi.png"
    table = cli("--db", sqlite_url, "analyze", "pmi", "--plot", str(plot))
    assert table.exit_code == 0, table.stderr
    assert "llama-chat-a" in table.stdout and "Pearson" in table.stdout
    assert plot.read_bytes()[:8] == PNG


def test_shift_through_the_cli(cli, sqlite_url, tmp_path):
    plot = tmp_path / "shift.png"
    data = _json(cli, sqlite_url, "shift", "--plot", str(plot))
    assert plot.read_bytes()[:8] == PNG
    names, base = _raw(sqlite_url, "base")
    _, cot = _raw(sqlite_url, "cot")
    _, rep = _raw(sqlite_url, "repeat")
    _, both = _raw(sqlite_url, "repeat+cot")
    err = [np.linalg.norm(cot[i] + rep[i] - base[i] - both[i]) / np.linalg.norm(both[i] - base[i])
           for i in range(len(names))]
    assert [r["additive_error"] for r in data["models"]] == pytest.approx(err, rel=1e-5)
    assert data["summary"]["additive"]["median"] == pytest.approx(np.median(err), rel=1e-5)
    d_both = both.mean(axis=1) - base.mean(axis=1)
    d_sum = cot.mean(axis=1) + rep.mean(axis=1) - 2 * base.mean(axis=1)
    assert data["summary"]["mean_change_pearson"] == pytest.approx(
        np.corrcoef(d_both, d_sum)[0, 1], abs=1e-6
    )
    # transfer for the first model: its base plus the mean repeat+cot shift of the others
    others = (both[1:] - base[1:]).mean(axis=0)
    t0 = np.linalg.norm(base[0] + others - both[0]) / np.linalg.norm(both[0] - base[0])
    assert data["models"][0]["transfer_error"]["repeat+cot"] == pytest.approx(t0, rel=1e-5)
    table = cli("--db", sqlite_url, "analyze", "shift", "--models",
                "atlas-zoo/llama-base,atlas-zoo/qwen-base,atlas-zoo/qwen-chat-a")
    assert table.exit_code == 0, table.stderr
    assert "additive error" in table.stdout and "llama-chat-a" not in table.stdout


def test_lineage_through_the_cli(cli, sqlite_url, tmp_path):
    plot = tmp_path / "lineage.png"
    data = _json(cli, sqlite_url, "lineage", "--plot", str(plot))
    assert plot.read_bytes()[:8] == PNG
    names, L = _raw(sqlite_url, "base")
    xi = L - L.mean(axis=1, keepdims=True)
    family = {n: n.split("/")[1].split("-")[0] for n in names}
    hits = []
    for i, name in enumerate(names):
        if name.endswith("-base"):
            continue
        d = [(np.sum((xi[i] - xi[j]) ** 2), names[j]) for j in range(len(names)) if j != i]
        nearest = min(d)[1]
        hits.append(family[nearest] == family[name])  # base or sibling: same family here
    assert data["n_evaluated"] == 4
    assert data["precision"]["@1"] == pytest.approx(np.mean(hits))
    assert 0 <= data["precision"]["@5"] <= 1
    assert {r["model"] for r in data["models"]} == {n for n in names if not n.endswith("-base")}


def test_predict_through_the_cli(cli, sqlite_url, tmp_path):
    names, _ = _raw(sqlite_url, "base")
    csv = tmp_path / "scores.csv"
    rows = [f"{n},{40 + 3 * i}" for i, n in enumerate(names[:-1])]
    csv.write_text("model,avg\n" + "\n".join(rows) + "\nsomeone/else,50\n")
    plot = tmp_path / "predict.png"
    data = _json(cli, sqlite_url, "predict", "--scores", str(csv), "--target", "avg",
                 "--seeds", "2", "--plot", str(plot))
    assert plot.read_bytes()[:8] == PNG
    assert data["n_labelled"] == 5 and data["n_groups"] == 2
    assert data["unknown_models"] == ["someone/else"]
    assert set(data["ridge"]) == {"group", "random"}
    assert len(data["ridge"]["random"]["per_seed"]) == 2
    (pred,) = data["predicted"]
    assert pred["model"] == names[-1] and 40 <= pred["prediction"] <= 52
    for row in data["models"]:
        assert 40 <= row["oof_group"] <= 52
    table = cli("--db", sqlite_url, "analyze", "predict", "--scores", str(csv), "--target", "avg")
    assert table.exit_code == 0 and "mean log-likelihood" in table.stdout
    bad = cli("--db", sqlite_url, "analyze", "predict", "--scores", str(csv), "--target", "nope")
    assert bad.exit_code == 2 and "nope" in bad.stderr


def test_validate_kl_through_the_cli(cli, sqlite_url, zoo_by_name, tmp_path):
    refs = ",".join(f"{n}={zoo_by_name[n].path}" for n in VALIDATED)
    plot = tmp_path / "validate.png"
    args = ("validate-kl", "--models", refs, "--textset", TEXTSET, "--samples", "1",
            "--max-new-tokens", "10", "--seed", "3", "--bootstrap", "200")
    data = _json(cli, sqlite_url, *args, "--plot", str(plot))
    assert plot.read_bytes()[:8] == PNG
    assert data["models"] == list(VALIDATED) and data["prompts"] == len(PAIRS)
    assert set(data["vector_source"].values()) == {"store"}
    assert len(data["pairs"]) == 6
    names, L = _raw(sqlite_url, "base", clip=False)
    sub = np.stack([L[names.index(n)] for n in VALIDATED])
    sub = np.maximum(sub, np.quantile(sub, 0.02))  # clipped among the compared models
    xi = sub - sub.mean(axis=1, keepdims=True)
    for pair in data["pairs"]:
        i, j = VALIDATED.index(pair["a"]), VALIDATED.index(pair["b"])
        assert pair["vector"] == pytest.approx(np.sum((xi[i] - xi[j]) ** 2) / (2 * xi.shape[1]))
        assert pair["mc_sym"] == pytest.approx((pair["mc_ab"] + pair["mc_ba"]) / 2)
    mc = [p["mc_sym"] for p in data["pairs"]]
    vec = [p["vector"] for p in data["pairs"]]
    assert data["pearson"] == pytest.approx(np.corrcoef(mc, vec)[0, 1], abs=1e-9)
    lo, hi = data["pearson_ci95"]
    assert -1 <= lo <= hi <= 1
    assert all(0 < t <= 10 for t in data["mean_response_tokens"].values())
    again = _json(cli, sqlite_url, *args)  # seeded: the same responses and numbers
    assert again["pairs"] == data["pairs"]
    table = cli("--db", sqlite_url, "analyze", "validate-kl", "--models", refs.split(",")[0])
    assert table.exit_code == 2 and "three models" in table.stderr


def test_validate_kl_scores_the_text_set_when_the_store_lacks_a_vector(
    sqlite_url, zoo_by_name, tmp_path
):
    from atlas.api import Atlas

    refs = [f"{n}={zoo_by_name[n].path}" for n in VALIDATED[:2]]
    refs.append(f"atlas-zoo/fresh={zoo_by_name['atlas-zoo/qwen-chat-b'].path}")
    with Atlas(sqlite_url) as atlas:
        result = atlas.validate_kl(refs, TEXTSET, prompts=3, max_new_tokens=6, n_boot=50)
    assert result.vector_source["atlas-zoo/fresh"] == "computed"
    assert result.prompts == 3 and result.mc.shape == (3, 3)
    assert np.allclose(np.diag(result.mc), 0.0)


def test_errors_are_one_line_messages(cli, sqlite_url):
    missing = cli("--db", sqlite_url, "analyze", "pmi", "--textset", "nope")
    assert missing.exit_code == 4 and "nope" in missing.stderr
    unknown = cli("--db", sqlite_url, "analyze", "shift", "--models", "no/such-model")
    assert unknown.exit_code == 4 and "no/such-model" in unknown.stderr


def test_analyses_on_postgres(cli, pg_url, zoo_by_name, tmp_path):
    names = ("atlas-zoo/llama-base", "atlas-zoo/llama-chat-a", "atlas-zoo/qwen-base",
             "atlas-zoo/qwen-chat-a")
    _populate(pg_url, zoo_by_name, names, tmp_path)
    data = _json(cli, pg_url, "lineage")
    assert data["n_evaluated"] == 2 and data["precision"]["@1"] == 1.0
    pmi = _json(cli, pg_url, "pmi")
    assert pmi["n_models"] == 4 and all(math.isfinite(r["mi"]) for r in pmi["models"])
    shift = _json(cli, pg_url, "shift", "--plot", str(tmp_path / "s.png"))
    assert shift["n_models"] == 4 and (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_write_analyses_for_exports(sqlite_url, tmp_path):
    from atlas.analyses.report import write_analyses
    from atlas.store import Store

    store = Store(sqlite_url)
    try:
        summary = write_analyses(store, TEXTSET, tmp_path / "analyses")
    finally:
        store.close()
    for name in ("pmi", "shift", "lineage"):
        assert (tmp_path / "analyses" / f"{name}.png").read_bytes()[:8] == PNG
        data = json.loads((tmp_path / "analyses" / f"{name}.json").read_text())
        assert data["analysis"] == name
    assert summary["shift"]["n_models"] == len(SCORED)
    assert json.loads((tmp_path / "analyses" / "index.json").read_text()) == json.loads(
        json.dumps(summary)
    )
