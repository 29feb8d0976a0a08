"""The interactive map page: one self-contained HTML file (inline CSS and JS, no network).

Data travels as JSON inside `<script type="application/json">` with `<`, `>` and `&` escaped,
and the page's script writes every model name and metadata string with `textContent` or
`setAttribute`, never as markup.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def embed_json(data: Any) -> str:
    """JSON that is safe inside a <script> element: it cannot close it or open a comment."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group()], text)


def render_map(data: dict[str, Any], title: str) -> str:
    """The page for `data` (see `atlas.export.page_data`), titled `title`."""
    values = {"__ATLAS_TITLE__": html.escape(title), "__ATLAS_DATA__": embed_json(data)}
    return re.sub("__ATLAS_(?:TITLE|DATA)__", lambda m: values[m.group()], PAGE)


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>__ATLAS_TITLE__</title>
<style>
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; font: 14px/1.4 system-ui, -apple-system, "Segoe UI",
  Roboto, "DejaVu Sans", sans-serif; color: #1d2430; background: #f6f7f9; }
body { display: flex; flex-direction: column; }
header { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: center; padding: 8px 14px;
  background: #fff; border-bottom: 1px solid #dde1e7; }
header h1 { font-size: 16px; margin: 0; white-space: nowrap; }
#snapshot-info { color: #5b6472; font-size: 12px; flex: 1 1 260px; }
#search { width: 240px; padding: 5px 8px; border: 1px solid #c4cad3; border-radius: 4px; }
select, button { padding: 4px 8px; border: 1px solid #c4cad3; border-radius: 4px;
  background: #fff; font: inherit; cursor: pointer; }
main { flex: 1; display: flex; min-height: 0; }
#stage { flex: 1; position: relative; min-width: 0; }
#map { width: 100%; height: 100%; display: block; cursor: grab; background: #fff;
  user-select: none; touch-action: none; }
#map.dragging { cursor: grabbing; }
.pt { stroke: #fff; stroke-width: 0.8; cursor: pointer; }
.pt.dim { opacity: 0.15; }
.pt.match { stroke: #111; stroke-width: 1.6; }
.pt.neighbour { stroke: #111; stroke-width: 1.6; }
.pt.selected { stroke: #d62728; stroke-width: 3; }
.pt.dim.selected, .pt.dim.neighbour { opacity: 1; }
.link { stroke: #d62728; stroke-opacity: 0.45; stroke-width: 1.2; }
.label { font-size: 11px; fill: #1d2430; paint-order: stroke; stroke: #fff; stroke-width: 3px;
  pointer-events: none; }
.label.strong { font-weight: 600; }
#zoom { position: absolute; right: 10px; top: 10px; display: flex; gap: 4px; }
#tooltip { position: fixed; pointer-events: none; background: rgba(29, 36, 48, 0.94);
  color: #fff; padding: 6px 9px; border-radius: 4px; font-size: 12px; max-width: 360px;
  z-index: 10; }
#tooltip .name { font-weight: 600; display: block; word-break: break-all; }
#tooltip .row { display: block; color: #d5dae2; }
aside { width: 340px; overflow-y: auto; background: #fff; border-left: 1px solid #dde1e7;
  padding: 10px 14px; }
aside h2 { font-size: 14px; margin: 14px 0 6px; }
aside h3 { font-size: 13px; margin: 12px 0 4px; }
#legend { list-style: none; margin: 0; padding: 0; font-size: 12px; }
#legend li { display: flex; align-items: center; gap: 6px; padding: 1px 0; }
.swatch { width: 11px; height: 11px; border-radius: 50%; flex: none; }
.count { color: #7a8290; margin-left: auto; }
#search-results { list-style: none; margin: 4px 0; padding: 0; font-size: 12px; }
#search-results li, #neighbours li { cursor: pointer; padding: 2px 4px; border-radius: 3px;
  word-break: break-all; }
#search-results li:hover, #neighbours li:hover { background: #eef1f5; }
#neighbours { margin: 0; padding-left: 22px; font-size: 12px; }
#neighbours .kl { color: #5b6472; margin-left: 6px; white-space: nowrap; }
#selected-name { word-break: break-all; }
#selected-meta { display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; margin: 0;
  font-size: 12px; }
#selected-meta dt { color: #7a8290; }
#selected-meta dd { margin: 0; word-break: break-all; }
.hint { color: #7a8290; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1 id="title">atlas map</h1>
  <span id="snapshot-info"></span>
  <input id="search" type="search" placeholder="Search models by name" autocomplete="off"
    aria-label="Search models by name">
  <span id="match-count" class="hint"></span>
  <label>Colour by <select id="color-by" aria-label="Colour by"></select></label>
</header>
<main>
  <div id="stage">
    <svg id="map" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="Model map">
      <g id="links"></g><g id="points"></g><g id="labels"></g>
    </svg>
    <div id="zoom">
      <button id="zoom-in" type="button" title="Zoom in">+</button>
      <button id="zoom-out" type="button" title="Zoom out">&minus;</button>
      <button id="reset-view" type="button" title="Reset the view">Reset</button>
    </div>
  </div>
  <aside>
    <ul id="search-results"></ul>
    <section id="details" hidden>
      <h2 id="selected-name"></h2>
      <dl id="selected-meta"></dl>
      <h3>Nearest neighbours <span id="kl-unit" class="hint"></span></h3>
      <ol id="neighbours"></ol>
    </section>
    <p id="details-hint" class="hint">Click a model to list its nearest neighbours by estimated
      KL divergence. Scroll to zoom, drag to pan.</p>
    <h2 id="legend-title">Legend</h2>
    <ul id="legend"></ul>
  </aside>
</main>
<div id="tooltip" hidden></div>
<script type="application/json" id="atlas-data">__ATLAS_DATA__</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("atlas-data").textContent);
  var models = data.models;
  var neighbours = data.neighbours || [];
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"];
  var OTHER = "#9aa1ab";
  var ATTRIBUTES = data.attributes;
  var svg = document.getElementById("map");
  var gPoints = document.getElementById("points");
  var gLabels = document.getElementById("labels");
  var gLinks = document.getElementById("links");
  var tooltip = document.getElementById("tooltip");
  var search = document.getElementById("search");
  var colorBy = document.getElementById("color-by");
  var circles = [];
  var selected = -1;
  var matches = [];
  var view = { k: 1, tx: 0, ty: 0 };
  var frame = { cx: 0, cy: 0, s: 1, w: 1, h: 1 };
  var RADIUS = models.length > 2000 ? 3 : models.length > 300 ? 4.5 : 6;
  var MAX_LABELS = 60;

  function text(el, value) { el.textContent = value == null ? "" : String(value); return el; }
  function make(tag, cls) {
    var el = document.createElement(tag);
    if (cls) el.className = cls;
    return el;
  }
  function human(n) {
    if (n == null) return "";
    var units = [["T", 1e12], ["B", 1e9], ["M", 1e6], ["K", 1e3]];
    for (var i = 0; i < units.length; i++) {
      if (n >= units[i][1]) return (n / units[i][1]).toFixed(1) + units[i][0];
    }
    return String(n);
  }
  function fmtKL(v) { return v < 0.001 && v > 0 ? v.toExponential(2) : v.toFixed(4); }
  function attr(m, key) {
    var v = m[key];
    if (Array.isArray(v)) v = v.length ? v[0] : null;
    return v == null || v === "" ? "unknown" : String(v);
  }

  // --- header ---------------------------------------------------------------------------------
  var snap = data.snapshot;
  text(document.getElementById("title"), "atlas map #" + snap.id);
  text(document.getElementById("snapshot-info"),
    snap.method + " of " + snap.kind + " vectors (" + snap.variant + ") · text set " +
    snap.textset + " · " + models.length + " models · " + String(snap.created).slice(0, 19));
  text(document.getElementById("kl-unit"), "(KL, " + data.kl_unit + ")");

  // --- geometry, pan and zoom -----------------------------------------------------------------
  function measure() {
    var r = svg.getBoundingClientRect();
    frame.w = r.width || 800; frame.h = r.height || 600;
    var xs = models.map(function (m) { return m.x; });
    var ys = models.map(function (m) { return m.y; });
    var minX = Math.min.apply(null, xs), maxX = Math.max.apply(null, xs);
    var minY = Math.min.apply(null, ys), maxY = Math.max.apply(null, ys);
    frame.cx = (minX + maxX) / 2; frame.cy = (minY + maxY) / 2;
    var span = Math.max(maxX - minX, (maxY - minY) * frame.w / frame.h, 1e-9);
    frame.s = models.length > 1 ? 0.8 * frame.w / span : 1;
  }
  function px(m) { return (m.x - frame.cx) * frame.s * view.k + frame.w / 2 + view.tx; }
  function py(m) { return -(m.y - frame.cy) * frame.s * view.k + frame.h / 2 + view.ty; }
  function draw() {
    for (var i = 0; i < circles.length; i++) {
      circles[i].setAttribute("cx", px(models[i]).toFixed(1));
      circles[i].setAttribute("cy", py(models[i]).toFixed(1));
    }
    drawOverlay();
  }
  function zoomAt(factor, x, y) {
    var k = Math.min(500, Math.max(0.2, view.k * factor));
    var f = k / view.k;
    view.tx = x - frame.w / 2 - (x - frame.w / 2 - view.tx) * f;
    view.ty = y - frame.h / 2 - (y - frame.h / 2 - view.ty) * f;
    view.k = k;
    draw();
  }
  svg.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = svg.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  var drag = null;
  svg.addEventListener("pointerdown", function (e) {
    drag = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false };
  });
  window.addEventListener("pointermove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    drag.moved = true;
    svg.classList.add("dragging");
    view.tx = drag.tx + dx; view.ty = drag.ty + dy;
    draw();
  });
  window.addEventListener("pointerup", function () {
    svg.classList.remove("dragging");
    setTimeout(function () { drag = null; }, 0);
  });
  document.getElementById("zoom-in").addEventListener("click", function () {
    zoomAt(1.5, frame.w / 2, frame.h / 2);
  });
  document.getElementById("zoom-out").addEventListener("click", function () {
    zoomAt(1 / 1.5, frame.w / 2, frame.h / 2);
  });
  document.getElementById("reset-view").addEventListener("click", function () {
    view = { k: 1, tx: 0, ty: 0 }; draw();
  });
  window.addEventListener("resize", function () { measure(); draw(); });

  // --- points and tooltip ---------------------------------------------------------------------
  models.forEach(function (m, i) {
    var c = document.createElementNS(NS, "circle");
    c.setAttribute("class", "pt");
    c.setAttribute("r", RADIUS);
    c.setAttribute("data-index", String(i));
    c.setAttribute("data-model", m.name);
    gPoints.appendChild(c);
    circles.push(c);
  });
  function metaRows(m) {
    return [["type", m.type], ["architecture", m.architecture], ["parameters", human(m.params)],
      ["downloads", human(m.downloads)], ["likes", m.likes],
      ["base models", (m.base_models || []).join(", ")], ["status", m.status],
      ["revision", m.revision ? String(m.revision).slice(0, 12) : null]]
      .filter(function (r) { return r[1] != null && r[1] !== ""; });
  }
  gPoints.addEventListener("pointerover", function (e) {
    var c = e.target.closest ? e.target.closest("circle.pt") : null;
    if (!c) return;
    var m = models[+c.getAttribute("data-index")];
    tooltip.replaceChildren();
    tooltip.appendChild(text(make("span", "name"), m.name));
    metaRows(m).forEach(function (r) {
      tooltip.appendChild(text(make("span", "row"), r[0] + ": " + r[1]));
    });
    tooltip.hidden = false;
  });
  gPoints.addEventListener("pointermove", function (e) {
    tooltip.style.left = Math.min(e.clientX + 14, window.innerWidth - 370) + "px";
    tooltip.style.top = (e.clientY + 14) + "px";
  });
  gPoints.addEventListener("pointerout", function () { tooltip.hidden = true; });
  gPoints.addEventListener("click", function (e) {
    if (drag && drag.moved) return;
    var c = e.target.closest ? e.target.closest("circle.pt") : null;
    if (c) select(+c.getAttribute("data-index"));
  });

  // --- colours and legend ---------------------------------------------------------------------
  ATTRIBUTES.forEach(function (a) {
    var o = document.createElement("option");
    o.value = a[0]; text(o, a[1]);
    colorBy.appendChild(o);
  });
  function recolour() {
    var key = colorBy.value;
    var counts = {};
    models.forEach(function (m) { var v = attr(m, key); counts[v] = (counts[v] || 0) + 1; });
    var cats = Object.keys(counts).sort(function (a, b) {
      return (a === "unknown") - (b === "unknown") || counts[b] - counts[a] || (a < b ? -1 : 1);
    });
    var colour = {};
    cats.forEach(function (c, i) {
      colour[c] = i < PALETTE.length && c !== "unknown" ? PALETTE[i] : OTHER;
    });
    circles.forEach(function (c, i) { c.setAttribute("fill", colour[attr(models[i], key)]); });
    var legend = document.getElementById("legend");
    legend.replaceChildren();
    var shown = cats.slice(0, PALETTE.length);
    var rest = cats.slice(PALETTE.length).reduce(function (s, c) { return s + counts[c]; }, 0);
    shown.forEach(function (c) { legend.appendChild(legendRow(colour[c], c, counts[c])); });
    if (rest) legend.appendChild(legendRow(OTHER, "other", rest));
    var chosen = colorBy.options[colorBy.selectedIndex];
    text(document.getElementById("legend-title"), "Legend: " + (chosen ? chosen.textContent : ""));
  }
  function legendRow(colour, label, count) {
    var li = make("li");
    li.setAttribute("data-category", label);
    var sw = make("span", "swatch"); sw.style.background = colour;
    li.appendChild(sw); li.appendChild(text(make("span"), label));
    li.appendChild(text(make("span", "count"), count));
    return li;
  }
  colorBy.addEventListener("change", recolour);

  // --- labels and the selection overlay -------------------------------------------------------
  // Labels: the selection and its neighbours first, then search matches, then the most
  // downloaded models; a label is skipped when it would overlap one already placed.
  var byDownloads = models.map(function (_, i) { return i; }).sort(function (a, b) {
    return (models[b].downloads || 0) - (models[a].downloads || 0) || a - b;
  });
  function labelOrder() {
    var first = [];
    if (selected >= 0) {
      first.push(selected);
      (neighbours[selected] || []).forEach(function (p) { first.push(p[0]); });
    }
    return first.concat(matches.slice(0, 50), byDownloads);
  }
  function drawOverlay() {
    gLabels.replaceChildren();
    gLinks.replaceChildren();
    var boxes = [], seen = {}, searching = search.value.trim() !== "";
    var order = labelOrder(), pinned = {};
    if (selected >= 0) {
      pinned[selected] = true;
      (neighbours[selected] || []).forEach(function (p) { pinned[p[0]] = true; });
    }
    for (var n = 0; n < order.length && boxes.length < MAX_LABELS; n++) {
      var i = order[n];
      if (seen[i]) continue;
      seen[i] = true;
      if (searching && !pinned[i] && matches.indexOf(i) < 0) continue;
      var cx = px(models[i]), y = py(models[i]) + 4, width = 6.4 * models[i].name.length;
      if (cx < 0 || y < 0 || cx > frame.w || y > frame.h + 10) continue;
      var left = cx + RADIUS + 3 + width > frame.w;  // no room on the right: label on the left
      var x = left ? cx - RADIUS - 3 : cx + RADIUS + 3;
      var box = left ? [x - width, y - 10, x, y + 3] : [x, y - 10, x + width, y + 3];
      var clash = boxes.some(function (b) {
        return box[0] < b[2] && b[0] < box[2] && box[1] < b[3] && b[1] < box[3];
      });
      if (clash && i !== selected) continue;
      boxes.push(box);
      var t = document.createElementNS(NS, "text");
      t.setAttribute("class", i === selected ? "label strong" : "label");
      t.setAttribute("x", x.toFixed(1));
      t.setAttribute("y", y.toFixed(1));
      t.setAttribute("data-index", String(i));
      if (left) t.setAttribute("text-anchor", "end");
      gLabels.appendChild(text(t, models[i].name));
    }
    if (selected < 0) return;
    (neighbours[selected] || []).forEach(function (p) {
      var l = document.createElementNS(NS, "line");
      l.setAttribute("class", "link");
      l.setAttribute("x1", px(models[selected]).toFixed(1));
      l.setAttribute("y1", py(models[selected]).toFixed(1));
      l.setAttribute("x2", px(models[p[0]]).toFixed(1));
      l.setAttribute("y2", py(models[p[0]]).toFixed(1));
      gLinks.appendChild(l);
    });
  }

  // --- selection and nearest neighbours -------------------------------------------------------
  function select(i) {
    circles.forEach(function (c) { c.classList.remove("selected", "neighbour"); });
    selected = i;
    var m = models[i];
    circles[i].classList.add("selected");
    gPoints.appendChild(circles[i]);
    document.getElementById("details").hidden = false;
    document.getElementById("details-hint").hidden = true;
    text(document.getElementById("selected-name"), m.name);
    var dl = document.getElementById("selected-meta");
    dl.replaceChildren();
    metaRows(m).concat([["x, y", m.x.toFixed(3) + ", " + m.y.toFixed(3)]]).forEach(function (r) {
      dl.appendChild(text(make("dt"), r[0])); dl.appendChild(text(make("dd"), r[1]));
    });
    var ol = document.getElementById("neighbours");
    ol.replaceChildren();
    (neighbours[i] || []).forEach(function (p) {
      var n = models[p[0]];
      circles[p[0]].classList.add("neighbour");
      var li = make("li");
      li.setAttribute("data-index", String(p[0]));
      li.setAttribute("data-model", n.name);
      li.setAttribute("data-kl", String(p[1]));
      li.appendChild(text(make("span", "name"), n.name));
      li.appendChild(text(make("span", "kl"), fmtKL(p[1])));
      ol.appendChild(li);
    });
    if (!(neighbours[i] || []).length) ol.appendChild(text(make("li", "hint"), "no other models"));
    drawOverlay();
    document.body.setAttribute("data-selected", m.name);
  }
  document.getElementById("neighbours").addEventListener("click", function (e) {
    var li = e.target.closest ? e.target.closest("li[data-index]") : null;
    if (li) select(+li.getAttribute("data-index"));
  });

  // --- search ---------------------------------------------------------------------------------
  function runSearch() {
    var q = search.value.trim().toLowerCase();
    matches = [];
    models.forEach(function (m, i) {
      if (q && m.name.toLowerCase().indexOf(q) >= 0) matches.push(i);
    });
    circles.forEach(function (c, i) {
      c.classList.toggle("match", !!q && matches.indexOf(i) >= 0);
      c.classList.toggle("dim", !!q && matches.indexOf(i) < 0);
    });
    matches.forEach(function (i) { gPoints.appendChild(circles[i]); });
    text(document.getElementById("match-count"),
      q ? matches.length + (matches.length === 1 ? " match" : " matches") : "");
    var ul = document.getElementById("search-results");
    ul.replaceChildren();
    matches.slice(0, 25).forEach(function (i) {
      var li = make("li");
      li.setAttribute("data-index", String(i));
      li.setAttribute("data-model", models[i].name);
      ul.appendChild(text(li, models[i].name));
    });
    drawOverlay();
  }
  search.addEventListener("input", runSearch);
  search.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && matches.length) select(matches[0]);
    if (e.key === "Escape") { search.value = ""; runSearch(); }
  });
  document.getElementById("search-results").addEventListener("click", function (e) {
    var li = e.target.closest ? e.target.closest("li[data-index]") : null;
    if (li) select(+li.getAttribute("data-index"));
  });

  // --- start ----------------------------------------------------------------------------------
  measure();
  recolour();
  draw();
  var wanted = "";
  try {
    wanted = decodeURIComponent((location.hash.match(/[#&]model=([^&]*)/) || [])[1] || "");
  } catch (err) { wanted = ""; }
  if (wanted) {
    models.forEach(function (m, i) { if (m.name === wanted) select(i); });
  }
  document.body.setAttribute("data-ready", "true");
})();
</script>
</body>
</html>
"""
