"""What an export writes: each store-only analysis as JSON and PNG, and a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atlas.analyses import lineage, pmi, shift
from atlas.errors import AtlasError


def write_analyses(store: Any, textset: str, directory: Path | str) -> dict[str, Any]:
    """Run the store-only analyses (pmi, shift, lineage) on `textset` into `directory`.

    Each writes `<name>.json` and `<name>.png`; an analysis the data cannot support (no
    unconditional vectors, no prompt variants, no recorded lineage) is listed as skipped with
    the reason. The summary is also written to `index.json` and returned. Used by exports.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"textset": textset}
    runs = {
        "pmi": (pmi, lambda: pmi.analyze(store, textset)),
        "shift": (shift, lambda: shift.analyze(store, textset)),
        "lineage": (lineage, lambda: lineage.analyze(store, textset)),
    }
    for name, (module, run) in runs.items():
        try:
            result = run()
        except AtlasError as exc:
            summary[name] = {"skipped": str(exc)}
            continue
        data = result.as_dict()
        if name == "lineage" and not data["n_evaluated"]:
            summary[name] = {"skipped": "no fine-tuned model has its recorded base in the atlas"}
            continue
        (out / f"{name}.json").write_text(
            json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        module.plot(result, out / f"{name}.png")
        summary[name] = {"json": f"{name}.json", "png": f"{name}.png", **_headline(name, data)}
    (out / "index.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _headline(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """The few numbers an export's summary shows for one analysis."""
    if name == "pmi":
        return {"n_models": data["n_models"], "pearson": data["pearson"],
                "spearman": data["spearman"]}
    if name == "shift":
        s = data["summary"]
        return {"n_models": data["n_models"], "additive_median": s["additive"]["median"],
                "additive_centred_median": s["additive_centred"]["median"],
                "mean_change_pearson": s["mean_change_pearson"]}
    return {"n_evaluated": data["n_evaluated"], "precision": data["precision"]}
