"""The papers' findings on a real model family, reproduced through the CLI (`make validate`).

Builds (or reuses from the cache) SmolLM2-135M-Instruct and its small real family
(`atlas.testing.real`), scores every member on the first PAIRS sample pairs with all four prompt
variants (`atlas score`), runs `atlas analyze validate-kl`, `shift`, `pmi` and `lineage`, makes a
PCA map and exports it, and writes a report folder (report.json, the analyses' JSON and PNG,
the export) before printing the table the README shows. Same seeds, same numbers.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def atlas(*args: str, env: dict[str, str], capture: bool = False) -> str:
    """Run one atlas command as a user would; stop the job if it fails."""
    print(f"$ atlas {' '.join(args)}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "atlas", "--quiet", *args], check=True, env=env,
                          stdout=subprocess.PIPE if capture else None, text=True)  # fmt: skip
    return done.stdout or ""


def analysis(name: str, args: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    """`atlas analyze NAME ... --json --plot out/NAME.png`, its JSON saved as out/NAME.json."""
    text = atlas("analyze", name, *args, "--plot", str(out / f"{name}.png"), "--json",
                 env=env, capture=True)  # fmt: skip
    (out / f"{name}.json").write_text(text)
    return json.loads(text)


def subset(pairs: int, out: Path) -> Path:
    """The first `pairs` pairs of the packaged sample set, as a JSONL file to import."""
    sample = ROOT / "atlas" / "data" / "sample.jsonl"
    lines = [x for x in sample.read_text(encoding="utf-8").split("\n") if x.strip()][:pairs]
    path = out / f"sample-{pairs}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(finding, paper, measured here, command) rows, as the README shows them."""
    kl, sh, pmi, lin = (report[k] for k in ("validate-kl", "shift", "pmi", "lineage"))
    s = sh["summary"]
    sci, pci = kl["spearman_ci95"], kl["pearson_ci95"]
    return [
        ("KL estimate vs Monte Carlo KL, Spearman (Takase et al.)", "high, on 8 models",
         f"{fmt(kl['spearman'])} [{fmt(sci[0], 2)}, {fmt(sci[1], 2)}], Pearson "
         f"{fmt(kl['pearson'])} [{fmt(pci[0], 2)}, {fmt(pci[1], 2)}]; {len(kl['models'])} "
         f"models, {kl['prompts']} prompts", "analyze validate-kl"),
        ("prompt shift additivity, median relative error", "0.062",
         fmt(s["additive"]["median"]), "analyze shift"),
        ("the same, double-centred", "0.074", fmt(s["additive_centred"]["median"]),
         "analyze shift"),
        ("mean log-likelihood change, correlation", "0.98", fmt(s["mean_change_pearson"]),
         "analyze shift"),
        ("shift transfer (own base + the others' mean shift), median relative error",
         "larger than additivity",
         ", ".join(f"{v} {fmt(e['median'], 2)}" for v, e in s["transfer"].items()),
         "analyze shift"),
        ("MI estimate vs variance approximation, Pearson", "correlated",
         f"{fmt(pmi['pearson'])} (Spearman {fmt(pmi['spearman'])})", "analyze pmi"),
        ("fine-tunes near their base, precision@1 (Oyama et al.)", "fine-tunes cluster by base",
         f"{fmt(lin['precision']['@1'], 2)} (chance {fmt(lin['chance_at_1'], 2)}, "
         f"{lin['n_evaluated']} models)", "analyze lineage"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "validation",
        help="report folder (its atlas store lives in OUT/home)",
    )
    parser.add_argument("--pairs", type=int, default=32, help="sample pairs to score")
    parser.add_argument("--prompts", type=int, default=32, help="validate-kl prompts")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="validate-kl answers")
    parser.add_argument("--steps", type=int, default=4, help="fine-tuning steps (first level)")
    parser.add_argument("--child-steps", type=int, default=2, help="steps of the second level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="start from an empty store")
    opts = parser.parse_args()

    from atlas.testing import real

    started = time.perf_counter()
    out: Path = opts.out.resolve()
    if opts.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ATLAS_HOME": str(out / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("ATLAS_DATABASE_URL", None)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    print("building the real family (cached after the first run) ...", file=sys.stderr)
    training = real.Training(steps=opts.steps, child_steps=opts.child_steps, seed=opts.seed)
    folders = real.build_family(training, log=lambda m: print(m, file=sys.stderr, flush=True))
    t = lap("family", started)

    name = f"sample-{opts.pairs}"
    atlas("textset", "import", str(subset(opts.pairs, out)), "--name", name, env=env)
    for model, folder in folders.items():
        atlas("score", str(folder), "--name", model, "--textset", name, "--device", "cpu",
              env=env)  # fmt: skip
    t = lap("score", t)

    refs = ",".join(f"{m}={f}" for m, f in folders.items())
    report: dict[str, Any] = {}
    report["validate-kl"] = analysis("validate-kl", [
        "--models", refs, "--textset", name, "--prompts", str(opts.prompts),
        "--max-new-tokens", str(opts.max_new_tokens), "--seed", str(opts.seed),
        "--device", "cpu"], out, env)  # fmt: skip
    t = lap("validate-kl", t)
    for what in ("shift", "pmi", "lineage"):
        report[what] = analysis(what, ["--textset", name], out, env)
    t = lap("shift, pmi, lineage", t)
    atlas("map", "refresh", "--method", "pca", "--textset", name, env=env)
    atlas("export", str(out / "export"), env=env)
    lap("map and export", t)
    timings["total"] = round(time.perf_counter() - started, 1)

    rows = table(report)
    summary = {
        "settings": {"pairs": opts.pairs, "prompts": opts.prompts,
                     "max_new_tokens": opts.max_new_tokens, "training": vars(training),
                     "family_key": real.family_key(training)},
        "models": {m: str(f) for m, f in folders.items()},
        "lineage": {m: json.loads((f / real.MANIFEST).read_text()).get("parent")
                    for m, f in folders.items()},
        "table": [dict(zip(("finding", "paper", "measured", "command"), r, strict=True))
                  for r in rows],
        "seconds": timings,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")

    print("| finding | paper | measured here | command |")
    print("| --- | --- | --- | --- |")
    for finding, paper, measured, command in rows:
        print(f"| {finding} | {paper} | {measured} | `atlas {command}` |")
    print(
        f"\nreport: {out}  (run time {timings['total']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
        + ")"
    )


if __name__ == "__main__":
    main()
