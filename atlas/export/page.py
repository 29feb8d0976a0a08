"""The interactive map page: one self-contained HTML file (inline CSS and JS, no network).

The page lives as real files in `atlas/export/page/` (map.html, map.css, map.js), inlined here at
export time.

Data travels as JSON inside `<script type="application/json">` with `<`, `>` and `&` escaped,
and the page's script writes every model name and metadata string with `textContent` or
`setAttribute`, never as markup.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from importlib import resources
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


@cache
def _asset(name: str) -> str:
    return resources.files("atlas.export").joinpath("page", name).read_text(encoding="utf-8")


def render_map(data: dict[str, Any], title: str) -> str:
    """The page for `data` (see `atlas.export.snapshot.page_data`), titled `title`."""
    values = {
        "__ATLAS_TITLE__": html.escape(title),
        "__ATLAS_CSS__": _asset("map.css"),
        "__ATLAS_JS__": _asset("map.js"),
        "__ATLAS_DATA__": embed_json(data),
    }
    # One pass over the template: nothing inserted is searched again.
    template = _asset("map.html")
    return re.sub("__ATLAS_(?:TITLE|CSS|JS|DATA)__", lambda m: values[m.group()], template)
