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
  // Large maps draw their points on a canvas (one paint per frame) instead of one SVG circle
  // per model; the selection, its neighbours, links and labels stay in the SVG overlay.
  var CANVAS = data.render === "canvas";
  var canvas = null, ctx = null, groups = [], fills = new Array(models.length);
  var isMatch = new Uint8Array(models.length);
  var lower = models.map(function (m) { return String(m.name).toLowerCase(); });
  var stats = { draws: 0, draw_ms: 0, search_ms: 0, select_ms: 0 };

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
    var minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (var i = 0; i < models.length; i++) {
      var m = models[i];
      if (m.x < minX) minX = m.x; if (m.x > maxX) maxX = m.x;
      if (m.y < minY) minY = m.y; if (m.y > maxY) maxY = m.y;
    }
    if (!models.length) { minX = maxX = minY = maxY = 0; }
    frame.cx = (minX + maxX) / 2; frame.cy = (minY + maxY) / 2;
    var span = Math.max(maxX - minX, (maxY - minY) * frame.w / frame.h, 1e-9);
    frame.s = models.length > 1 ? 0.8 * frame.w / span : 1;
  }
  function px(m) { return (m.x - frame.cx) * frame.s * view.k + frame.w / 2 + view.tx; }
  function py(m) { return -(m.y - frame.cy) * frame.s * view.k + frame.h / 2 + view.ty; }
  function draw() {
    var t0 = performance.now();
    if (CANVAS) paint();
    for (var i = 0; i < circles.length; i++) {
      circles[i].setAttribute("cx", px(models[i]).toFixed(1));
      circles[i].setAttribute("cy", py(models[i]).toFixed(1));
    }
    drawOverlay();
    stats.draws += 1;
    stats.draw_ms = performance.now() - t0;
  }
  var pending = false;
  function redraw() {  // canvas maps: at most one paint per animation frame
    if (!CANVAS) { draw(); return; }
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(); });
  }

  // --- the canvas (large maps) ----------------------------------------------------------------
  function paint() {
    var dpr = window.devicePixelRatio || 1;
    var w = Math.round(frame.w * dpr), h = Math.round(frame.h * dpr);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, frame.w, frame.h);
    var a = frame.s * view.k, bx = frame.w / 2 + view.tx - frame.cx * a;
    var by = frame.h / 2 + view.ty + frame.cy * a, r = RADIUS, TAU = 2 * Math.PI;
    var searching = search.value.trim() !== "";
    ctx.globalAlpha = searching ? 0.15 : 1;
    for (var g = 0; g < groups.length; g++) {
      ctx.fillStyle = groups[g].colour;
      ctx.beginPath();
      var members = groups[g].members;
      for (var n = 0; n < members.length; n++) {
        var m = models[members[n]], x = m.x * a + bx, y = by - m.y * a;
        if (x < -r || y < -r || x > frame.w + r || y > frame.h + r) continue;
        ctx.moveTo(x + r, y);
        ctx.arc(x, y, r, 0, TAU);
      }
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    if (!searching) return;
    ctx.strokeStyle = "#111";
    ctx.lineWidth = 1.6;
    matches.forEach(function (i) {
      var m = models[i], x = m.x * a + bx, y = by - m.y * a;
      ctx.beginPath();
      ctx.arc(x, y, r, 0, TAU);
      ctx.fillStyle = fills[i];
      ctx.fill();
      ctx.stroke();
    });
  }
  // A grid over the map's own coordinates finds the point under the pointer.
  var grid = {}, cell = 1;
  function buildGrid() {
    var span = Math.max(frame.w, frame.h) / (frame.s || 1);
    cell = span / 256 || 1;
    grid = {};
    models.forEach(function (m, i) {
      var key = Math.floor(m.x / cell) + "," + Math.floor(m.y / cell);
      (grid[key] || (grid[key] = [])).push(i);
    });
  }
  function hit(clientX, clientY) {
    var rect = svg.getBoundingClientRect(), a = frame.s * view.k;
    var x = (clientX - rect.left - frame.w / 2 - view.tx) / a + frame.cx;
    var y = -(clientY - rect.top - frame.h / 2 - view.ty) / a + frame.cy;
    var reach = (RADIUS + 1.5) / a, best = -1, bestD = reach * reach;
    var cx0 = Math.floor((x - reach) / cell), cx1 = Math.floor((x + reach) / cell);
    var cy0 = Math.floor((y - reach) / cell), cy1 = Math.floor((y + reach) / cell);
    for (var gx = cx0; gx <= cx1; gx++) {
      for (var gy = cy0; gy <= cy1; gy++) {
        var bucket = grid[gx + "," + gy];
        if (!bucket) continue;
        for (var n = 0; n < bucket.length; n++) {
          var i = bucket[n], dx = models[i].x - x, dy = models[i].y - y, d = dx * dx + dy * dy;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }
  function zoomAt(factor, x, y) {
    var k = Math.min(500, Math.max(0.2, view.k * factor));
    var f = k / view.k;
    view.tx = x - frame.w / 2 - (x - frame.w / 2 - view.tx) * f;
    view.ty = y - frame.h / 2 - (y - frame.h / 2 - view.ty) * f;
    view.k = k;
    redraw();
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
    redraw();
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
  window.addEventListener("resize", function () { measure(); if (CANVAS) buildGrid(); draw(); });

  // --- points and tooltip ---------------------------------------------------------------------
  if (CANVAS) {
    canvas = document.createElement("canvas");
    canvas.id = "points-canvas";
    svg.parentNode.insertBefore(canvas, svg);
    svg.classList.add("over-canvas");
    ctx = canvas.getContext("2d");
  }
  if (!CANVAS) models.forEach(function (m, i) {
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
      ["template mode", m.template_mode],
      ["revision", m.revision ? String(m.revision).slice(0, 12) : null]]
      .filter(function (r) { return r[1] != null && r[1] !== ""; });
  }
  gPoints.addEventListener("pointerover", function (e) {
    var c = e.target.closest ? e.target.closest("circle.pt") : null;
    if (!c) return;
    showTip(models[+c.getAttribute("data-index")]);
  });
  gPoints.addEventListener("pointermove", function (e) {
    tooltip.style.left = Math.min(e.clientX + 14, window.innerWidth - 370) + "px";
    tooltip.style.top = (e.clientY + 14) + "px";
  });
  gPoints.addEventListener("pointerout", function () { tooltip.hidden = true; });
  function showTip(m) {
    tooltip.replaceChildren();
    tooltip.appendChild(text(make("span", "name"), m.name));
    metaRows(m).forEach(function (r) {
      tooltip.appendChild(text(make("span", "row"), r[0] + ": " + r[1]));
    });
    tooltip.hidden = false;
  }
  if (CANVAS) {
    svg.addEventListener("pointermove", function (e) {
      if (drag && drag.moved) return;
      if (e.target.closest && e.target.closest("circle.pt")) return;  // the overlay's own
      var i = hit(e.clientX, e.clientY);
      svg.style.cursor = i >= 0 ? "pointer" : "";
      if (i < 0) { tooltip.hidden = true; return; }
      showTip(models[i]);
      tooltip.style.left = Math.min(e.clientX + 14, window.innerWidth - 370) + "px";
      tooltip.style.top = (e.clientY + 14) + "px";
    });
    svg.addEventListener("pointerleave", function () { tooltip.hidden = true; });
    svg.addEventListener("click", function (e) {
      if (drag && drag.moved) return;
      if (e.target.closest && e.target.closest("circle.pt")) return;
      var i = hit(e.clientX, e.clientY);
      if (i >= 0) select(i);
    });
  }
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
    var byColour = {};
    models.forEach(function (m, i) {
      fills[i] = colour[attr(m, key)];
      (byColour[fills[i]] || (byColour[fills[i]] = [])).push(i);
    });
    groups = Object.keys(byColour).map(function (c) { return { colour: c, members: byColour[c] }; });
    circles.forEach(function (c, i) { c.setAttribute("fill", fills[i]); });
    if (CANVAS) redraw();
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
      if (searching && !pinned[i] && !isMatch[i]) continue;
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
    if (CANVAS) marks();
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

  function marks() {  // canvas maps: the selection and its neighbours as SVG circles on top
    gPoints.replaceChildren();
    if (selected < 0) return;
    (neighbours[selected] || []).map(function (p) { return [p[0], "pt neighbour"]; })
      .concat([[selected, "pt selected"]]).forEach(function (pair) {
        var c = document.createElementNS(NS, "circle"), i = pair[0];
        c.setAttribute("class", pair[1]);
        c.setAttribute("r", RADIUS + 1);
        c.setAttribute("cx", px(models[i]).toFixed(1));
        c.setAttribute("cy", py(models[i]).toFixed(1));
        c.setAttribute("fill", fills[i]);
        c.setAttribute("data-index", String(i));
        c.setAttribute("data-model", models[i].name);
        gPoints.appendChild(c);
      });
  }

  // --- selection and nearest neighbours -------------------------------------------------------
  function select(i) {
    var t0 = performance.now();
    circles.forEach(function (c) { c.classList.remove("selected", "neighbour"); });
    selected = i;
    var m = models[i];
    if (!CANVAS) {
      circles[i].classList.add("selected");
      gPoints.appendChild(circles[i]);
    }
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
      if (!CANVAS) circles[p[0]].classList.add("neighbour");
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
    stats.select_ms = performance.now() - t0;
  }
  document.getElementById("neighbours").addEventListener("click", function (e) {
    var li = e.target.closest ? e.target.closest("li[data-index]") : null;
    if (li) select(+li.getAttribute("data-index"));
  });

  // --- search ---------------------------------------------------------------------------------
  function runSearch() {
    var t0 = performance.now();
    var q = search.value.trim().toLowerCase();
    matches = [];
    isMatch.fill(0);
    if (q) {
      for (var i = 0; i < lower.length; i++) {
        if (lower[i].indexOf(q) >= 0) { matches.push(i); isMatch[i] = 1; }
      }
    }
    circles.forEach(function (c, i) {
      c.classList.toggle("match", !!q && isMatch[i] === 1);
      c.classList.toggle("dim", !!q && isMatch[i] === 0);
    });
    if (!CANVAS) matches.forEach(function (i) { gPoints.appendChild(circles[i]); });
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
    if (CANVAS) paint();
    drawOverlay();
    stats.search_ms = performance.now() - t0;
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
  if (CANVAS) buildGrid();
  recolour();
  draw();
  // For tests and benchmarks: where a model is drawn, what is under a point, timings.
  window.atlasMap = {
    mode: CANVAS ? "canvas" : "svg",
    stats: stats,
    position: function (i) {
      var r = svg.getBoundingClientRect();
      return { x: r.left + px(models[i]), y: r.top + py(models[i]) };
    },
    hit: function (x, y) { return CANVAS ? hit(x, y) : -1; },
  };
  var wanted = "";
  try {
    wanted = decodeURIComponent((location.hash.match(/[#&]model=([^&]*)/) || [])[1] || "");
  } catch (err) { wanted = ""; }
  if (wanted) {
    models.forEach(function (m, i) { if (m.name === wanted) select(i); });
  }
  stats.ready_ms = performance.now();
  document.body.setAttribute("data-ready", "true");
})();
