"""Benchmark the map page in real headless Chromium: load, pan, search and click at scale.

Renders `map.html` for synthetic maps (clustered points, ten neighbours each, the metadata an
export embeds) once with SVG circles and once with the canvas that large maps use, opens each in
Debian's chromium (`make browser`) over the DevTools protocol, and measures:

- load: from navigation start to the page being ready (`data-ready`), in the page's clock;
- pan: a drag of 30 real mouse moves, wall time per move until the frame is drawn;
- search: typing one character that matches a family (the page's own timing of the search);
- click: a real click on a point until its neighbour list is shown.

    python benchmarks/page.py                      # 1,000 / 5,000 / 20,000 points
    python benchmarks/page.py --points 20000 --modes canvas
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _cdp import Browser, chromium_path  # noqa: E402

from atlas.export.page import render_map  # noqa: E402
from atlas.export.snapshot import COLOUR_ATTRIBUTES  # noqa: E402

FRAME = "new Promise(function(r){requestAnimationFrame(function(){r(1)})})"


def page_data(n: int, render: str, seed: int = 0) -> dict:
    """Synthetic page data shaped like `export.page_data` for n models."""
    rng = np.random.default_rng(seed)
    families = max(1, n // 8)
    centres = rng.normal(scale=30.0, size=(families, 2))
    family = np.arange(n) // 8
    xy = centres[family] + rng.normal(scale=1.0, size=(n, 2))
    types = ["llama", "qwen2", "mistral", "gemma", "phi3", "gpt2"]
    models = []
    for i in range(n):
        f = int(family[i])
        models.append({
            "id": i + 1, "name": f"fam{f}/model-{i}", "x": float(xy[i, 0]), "y": float(xy[i, 1]),
            "revision": "r1", "type": types[f % len(types)], "architecture": "ForCausalLM",
            "params": int(rng.integers(1, 80)) * 10**8, "downloads": int(rng.integers(0, 10**6)),
            "likes": 0, "base_models": [f"fam{f}/model-{f * 8}"], "status": "scored",
            "author": f"fam{f}", "family": f"fam{f}/model-{f * 8}",
        })  # fmt: skip
    near = []
    for i in range(n):
        start = (i // 8) * 8
        others = [j for j in range(start, min(start + 8, n)) if j != i]
        extra = rng.choice(n, 10, replace=False).tolist()
        picks = (others + [j for j in extra if j != i and j not in others])[:10]
        near.append([[int(j), round(0.01 * (r + 1), 8)] for r, j in enumerate(picks)])
    return {
        "snapshot": {"id": 1, "method": "tsne", "kind": "conditional", "variant": "base",
                     "textset": "synth", "textset_sha256": "0" * 64,
                     "created": "2026-01-01T00:00:00+00:00", "clip_threshold": -50.0},
        "kl_unit": "nats per text", "render": render, "attributes": COLOUR_ATTRIBUTES,
        "models": models, "neighbours": near,
    }  # fmt: skip


def measure(path: Path, profile: Path, target: int) -> dict:
    browser = Browser(path.as_uri(), profile)
    try:
        browser.wait_for("document.body && document.body.getAttribute('data-ready')", 120)
        row = {"load_ms": browser.js("window.atlasMap.stats.ready_ms")}
        browser.js(FRAME)
        # pan: 30 moves of a drag from empty space, each until its frame is drawn
        browser.mouse("mousePressed", 5, 700, button="left", buttons=1, clickCount=1)
        started = time.perf_counter()
        for step in range(30):
            browser.mouse("mouseMoved", 10 + 4 * step, 700 - 2 * step, button="left", buttons=1)
            browser.js(FRAME)
        row["pan_ms_per_move"] = (time.perf_counter() - started) / 30 * 1000
        browser.mouse("mouseReleased", 130, 640, button="left", buttons=0, clickCount=1)
        row["draw_ms"] = browser.js("window.atlasMap.stats.draw_ms")
        browser.js("document.getElementById('reset-view').click()")
        browser.js(FRAME)
        # search: one typed character narrows to a family prefix
        browser.js("var q=document.getElementById('search');q.value='fam1';q.focus()")
        started = time.perf_counter()
        browser.type_text("2")
        browser.js(FRAME)
        row["search_ms"] = (time.perf_counter() - started) * 1000
        row["search_page_ms"] = browser.js("window.atlasMap.stats.search_ms")
        browser.js("var q=document.getElementById('search');q.value='';"
                   "q.dispatchEvent(new Event('input'))")  # fmt: skip
        browser.js(FRAME)
        # click a point with the mouse, until its neighbours are listed
        spot = browser.js(f"window.atlasMap.position({target})")
        started = time.perf_counter()
        browser.click(spot["x"], spot["y"])
        browser.wait_for("document.querySelectorAll('#neighbours li[data-model]').length")
        browser.js(FRAME)
        row["click_ms"] = (time.perf_counter() - started) * 1000
        row["selected"] = browser.js("document.body.getAttribute('data-selected')")
        return row
    finally:
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="1000,5000,20000", help="map sizes, comma-separated")
    parser.add_argument("--modes", default="svg,canvas", help="svg, canvas or both")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if chromium_path() is None:
        print("chromium is not installed; `make browser` installs Debian's package",
              file=sys.stderr)  # fmt: skip
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.points.split(",")]:
            for mode in args.modes.split(","):
                data = page_data(n, mode)
                path = Path(tmp) / f"map-{n}-{mode}.html"
                path.write_text(render_map(data, f"benchmark {n}"), encoding="utf-8")
                row = {"points": n, "mode": mode, "mb": round(path.stat().st_size / 1e6, 1),
                       **measure(path, Path(tmp) / f"profile-{n}-{mode}", n // 2)}  # fmt: skip
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    print("| points | drawing | page MB | load ms | pan ms per move | search ms | click ms |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['points']:,} | {r['mode']} | {r['mb']} | {r['load_ms']:.0f} | "
              f"{r['pan_ms_per_move']:.0f} | {r['search_ms']:.0f} | {r['click_ms']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
