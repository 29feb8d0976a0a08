"""map.html in a real headless Chromium: search, click, neighbours, hover, zoom, pan, escaping.

Chromium is Debian's `chromium` package (`make browser` installs it). Without it the test is
skipped on a workstation and fails in CI (when the CI variable is set).
"""

from __future__ import annotations

import json
import os
import struct
import time

import numpy as np
import pytest
from _cdp import Browser, chromium_path
from _vectorstore import clustered, make_textset, put_vector
from sqlmodel import select

from atlas.store.tables import Vector

N_TEXTS = 30
EVIL_NAME = "evil/<script>window.__pwned=1</script>"
EVIL_TYPE = '<img src=x onerror="window.__pwned=2">'


@pytest.fixture
def browser_path() -> str:
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make browser` installs Debian's package")
        pytest.skip("chromium is not installed; `make browser` installs Debian's package")
    return path


@pytest.fixture
def exported(tmp_path):
    """A t-SNE map of three families (and one hostile name), exported; plus the raw matrix."""
    return _export(tmp_path)


@pytest.fixture
def exported_canvas(tmp_path, monkeypatch):
    """The same map, exported as a large map's page is (points on a canvas)."""
    from atlas.export import snapshot

    monkeypatch.setattr(snapshot, "CANVAS_FROM", 5)
    return _export(tmp_path)


def _export(tmp_path):
    from atlas import Atlas

    L = clustered(25, N_TEXTS, clusters=3, seed=7)
    names = [f"family{i % 3}/model-{i:02d}" for i in range(24)] + [EVIL_NAME]
    L[24] = L[0] + 0.3
    with Atlas() as a:
        ts = make_textset(a.store, N_TEXTS)
        for i, name in enumerate(names):
            put_vector(a.store, ts, name, L[i],
                       model_type=EVIL_TYPE if i == 24 else ("llama", "qwen2", "gemma")[i % 3],
                       downloads=1000 * (25 - i), num_parameters=(i + 1) * 10**8,
                       base_models=[f"family{i % 3}/base"])  # fmt: skip
        # Template modes as scorer 2 records them: one family finished-turn, the rest not.
        with a.store.session() as s:
            for vec in s.exec(select(Vector)):
                finished = vec.model_id % 3 == 2
                vec.template_mode = "finished-turn" if finished else "generation-prompt"
                s.add(vec)
        snap = a.refresh_map("tsne").snapshot
        out = a.export(tmp_path / "export", neighbours=10)
    return out, names, L, snap.clip_threshold


def _kl_neighbours(L: np.ndarray, threshold: float, i: int, k: int) -> list[tuple[int, float]]:
    X = np.maximum(L.astype(np.float64), threshold)
    X -= X.mean(axis=1, keepdims=True)
    kl = ((X - X[i]) ** 2).sum(axis=1) / (2 * X.shape[1])
    kl[i] = np.inf
    order = np.argsort(kl, kind="stable")[:k]
    return [(int(j), float(kl[j])) for j in order]


def _centre(browser: Browser, selector: str) -> dict:
    return browser.js(
        "(function(){var e=document.querySelector(" + json.dumps(selector) + ");"
        "if(!e)return null;var r=e.getBoundingClientRect();"
        "return {x:r.left+r.width/2,y:r.top+r.height/2};})()"
    )


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_map_page_in_headless_chromium(browser_path, exported, tmp_path):
    out, names, L, threshold = exported
    target = names.index("family1/model-07")
    expected = _kl_neighbours(L, threshold, target, 10)
    browser = Browser((out / "map.html").as_uri(), tmp_path / "profile")
    try:
        browser.wait_for("document.body && document.body.getAttribute('data-ready')")
        assert browser.js("document.querySelectorAll('#points circle.pt').length") == 25
        assert browser.js("document.querySelectorAll('#legend li').length") == 4

        # search: typed into the box through the browser's input pipeline
        browser.js("document.getElementById('search').focus()")
        browser.type_text("model-07")
        assert browser.wait_for("document.getElementById('match-count').textContent") == (
            "1 match"
        )
        assert browser.js(
            "Array.from(document.querySelectorAll('#search-results li'))"
            ".map(function(l){return l.getAttribute('data-model')})"
        ) == ["family1/model-07"]
        assert browser.js("document.querySelectorAll('circle.pt.dim').length") == 24

        # click the match on the map with real mouse events
        index = browser.js("document.querySelector('#search-results li').dataset.index")
        spot = _centre(browser, f'circle.pt[data-index="{index}"]')
        hit = browser.js(
            f"document.elementFromPoint({spot['x']}, {spot['y']}).getAttribute('data-model')"
        )
        assert hit == "family1/model-07"
        browser.click(spot["x"], spot["y"])
        listed = browser.wait_for(
            "Array.from(document.querySelectorAll('#neighbours li[data-model]'))"
            ".map(function(l){return [l.getAttribute('data-model'), +l.getAttribute('data-kl')]})"
        )
        assert browser.js("document.getElementById('selected-name').textContent") == names[target]
        assert [name for name, _ in listed] == [names[j] for j, _ in expected]
        assert [kl for _, kl in listed] == pytest.approx([kl for _, kl in expected], rel=1e-6)
        assert all(n.startswith("family1/") for n, _ in listed[:7])  # its family comes first

        # hover shows the metadata tooltip
        browser.mouse("mouseMoved", spot["x"], spot["y"])
        assert not browser.js("document.getElementById('tooltip').hidden")
        tip = browser.js("document.getElementById('tooltip').textContent")
        assert "family1/model-07" in tip and "type: qwen2" in tip and "parameters: 800.0M" in tip

        # clicking a neighbour in the list selects it
        first = _centre(browser, "#neighbours li[data-model]")
        browser.click(first["x"], first["y"])
        assert browser.wait_for(
            "document.body.getAttribute('data-selected') === " + json.dumps(listed[0][0])
        )

        # colour by another attribute
        browser.js(
            "var s=document.getElementById('color-by');s.value='family';"
            "s.dispatchEvent(new Event('change'))"
        )
        legend = browser.js(
            "Array.from(document.querySelectorAll('#legend li'))"
            ".map(function(l){return l.getAttribute('data-category')})"
        )
        assert sorted(legend) == ["family0/base", "family1/base", "family2/base"]
        browser.js(
            "var s=document.getElementById('color-by');s.value='template_mode';"
            "s.dispatchEvent(new Event('change'))"
        )
        legend = browser.js(
            "Array.from(document.querySelectorAll('#legend li'))"
            ".map(function(l){return l.getAttribute('data-category')})"
        )
        assert sorted(legend) == ["finished-turn", "generation-prompt"]

        # wheel zoom spreads points apart; a drag on empty space pans them
        def gap() -> float:
            a = _centre(browser, 'circle.pt[data-index="0"]')
            b = _centre(browser, 'circle.pt[data-index="1"]')
            return float(np.hypot(a["x"] - b["x"], a["y"] - b["y"]))

        before = gap()
        browser.mouse("mouseWheel", 400, 300, deltaX=0, deltaY=-400)
        deadline = time.monotonic() + 30  # wheel events may reach the page asynchronously
        while gap() <= 1.5 * before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gap() > 1.5 * before
        start = _centre(browser, 'circle.pt[data-index="2"]')
        browser.mouse("mousePressed", 5, 700, button="left", buttons=1, clickCount=1)
        browser.mouse("mouseMoved", 60, 660, button="left", buttons=1)
        browser.mouse("mouseMoved", 105, 640, button="left", buttons=1)
        browser.mouse("mouseReleased", 105, 640, button="left", buttons=0, clickCount=1)
        browser.wait_for("!document.getElementById('map').classList.contains('dragging')")
        moved = _centre(browser, 'circle.pt[data-index="2"]')
        assert (moved["x"] - start["x"], moved["y"] - start["y"]) == pytest.approx(
            (100, -60), abs=1.5
        )
        browser.js("document.getElementById('reset-view').click()")

        # the hostile name is shown as text and nothing it carries ran
        browser.js("var q=document.getElementById('search');q.value='';q.focus()")
        browser.type_text("evil")
        browser.wait_for("document.querySelectorAll('#search-results li').length === 1")
        assert browser.js("document.querySelector('#search-results li').textContent") == EVIL_NAME
        assert browser.js("typeof window.__pwned") == "undefined"
        assert browser.js("document.querySelectorAll('img').length") == 0
        assert browser.js("document.scripts.length") == 2

        # back to the family view for the screenshot, pointer away from the points
        browser.js("var q=document.getElementById('search');q.value='';"
                   "q.dispatchEvent(new Event('input'))")  # fmt: skip
        browser.click(spot["x"], spot["y"])
        browser.mouse("mouseMoved", 2, 2)
        shot = browser.screenshot(tmp_path / "map-page.png")
    finally:
        browser.close()
    width, height = _png_size(shot)
    assert width >= 1000 and height >= 600
    assert shot.stat().st_size > 20_000


def test_large_map_page_draws_on_a_canvas(browser_path, exported_canvas, tmp_path):
    out, names, L, threshold = exported_canvas
    target = names.index("family1/model-07")
    expected = _kl_neighbours(L, threshold, target, 10)
    browser = Browser((out / "map.html").as_uri(), tmp_path / "profile")
    try:
        browser.wait_for("document.body && document.body.getAttribute('data-ready')")
        assert browser.js("window.atlasMap.mode") == "canvas"
        assert browser.js("document.querySelectorAll('circle.pt').length") == 0
        painted = browser.js(
            "(function(){var c=document.getElementById('points-canvas'),"
            "d=c.getContext('2d').getImageData(0,0,c.width,c.height).data,n=0;"
            "for(var i=3;i<d.length;i+=4)if(d[i]>0)n++;return n;})()"
        )
        assert painted > 25 * 9  # every point drawn, a few pixels each

        browser.js("document.getElementById('search').focus()")
        browser.type_text("model-07")
        assert browser.wait_for("document.getElementById('match-count').textContent") == (
            "1 match"
        )
        spot = browser.js(f"window.atlasMap.position({target})")
        assert browser.js(f"window.atlasMap.hit({spot['x']}, {spot['y']})") == target

        browser.mouse("mouseMoved", spot["x"], spot["y"])  # hover: the tooltip
        assert browser.wait_for("!document.getElementById('tooltip').hidden")
        assert "family1/model-07" in browser.js("document.getElementById('tooltip').textContent")

        browser.click(spot["x"], spot["y"])  # click: the neighbours, drawn on top
        listed = browser.wait_for(
            "Array.from(document.querySelectorAll('#neighbours li[data-model]'))"
            ".map(function(l){return [l.getAttribute('data-model'), +l.getAttribute('data-kl')]})"
        )
        assert [name for name, _ in listed] == [names[j] for j, _ in expected]
        assert [kl for _, kl in listed] == pytest.approx([kl for _, kl in expected], rel=1e-6)
        assert browser.js("document.querySelectorAll('circle.pt.neighbour').length") == 10
        assert browser.js("document.querySelector('circle.pt.selected').dataset.model") == (
            names[target]
        )

        browser.js(
            "var s=document.getElementById('color-by');s.value='family';"
            "s.dispatchEvent(new Event('change'))"
        )
        legend = browser.js(
            "Array.from(document.querySelectorAll('#legend li'))"
            ".map(function(l){return l.getAttribute('data-category')})"
        )
        assert sorted(legend) == ["family0/base", "family1/base", "family2/base"]

        before = browser.js("window.atlasMap.position(0)")  # a drag pans the canvas too
        browser.mouse("mousePressed", 5, 700, button="left", buttons=1, clickCount=1)
        browser.mouse("mouseMoved", 60, 660, button="left", buttons=1)
        browser.mouse("mouseMoved", 105, 640, button="left", buttons=1)
        browser.mouse("mouseReleased", 105, 640, button="left", buttons=0, clickCount=1)
        browser.wait_for("!document.getElementById('map').classList.contains('dragging')")
        after = browser.js("window.atlasMap.position(0)")
        assert (after["x"] - before["x"], after["y"] - before["y"]) == pytest.approx(
            (100, -60), abs=1.5
        )
        assert browser.js("typeof window.__pwned") == "undefined"
    finally:
        browser.close()
