"""Helpers for the sync, discovery and schedule tests: a local Hub serving the zoo, a tiny set."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from atlas.store import Store
from atlas.testing.demo_hub import demo_repos
from atlas.testing.hub import LocalHub, RepoSpec
from atlas.textsets import Item, import_items

TINY = "tiny"
TINY_ITEMS = [
    Item(prompt="What is two plus two?", response="Two plus two is four."),
    Item(prompt="Name a primary colour.", response="Red is a primary colour."),
    Item(prompt="Who wrote Hamlet?", response="Hamlet was written by William Shakespeare."),
    Item(prompt="Translate 'thank you' into German.", response="'Thank you' is 'danke'."),
    Item(prompt="def add(a, b):", response="    return a + b\n"),
    Item(prompt="Summarise: The meeting moved to Friday.", response="The meeting is on Friday."),
    Item(prompt="Is a tomato a fruit?", response="Botanically, yes: a tomato is a fruit."),
    Item(prompt="Suggest a name for a grey cat.", response="How about Smokey, Ash or Pebble?"),
]
# Pieces the scorer stores per model on a pairs text set: 4 conditional variants + unconditional.
PIECES_PER_MODEL = 5


def add_tiny(url: str) -> None:
    """Store the 8-pair text set `tiny` in the database at `url`."""
    store = Store(url)
    try:
        import_items(store, TINY, TINY_ITEMS, source="tests")
    finally:
        store.close()


def specs(root: Path, zoo_models: Sequence, only: Sequence[str] | None = None) -> list[RepoSpec]:
    """The demo Hub's repos (zoo + skip-reason repos), optionally only some of them."""
    chosen = demo_repos(root, zoo_models)
    if only is not None:
        chosen = [s for s in chosen if s.repo_id in only]
    return chosen


def start_hub(
    root: Path,
    zoo_models: Sequence,
    only: Sequence[str] | None = None,
    *,
    page_size: int = 4,
    token: str | None = None,
) -> LocalHub:
    """Serve the demo repos on 127.0.0.1 (caller stops it)."""
    hub = LocalHub(specs(root, zoo_models, only), page_size=page_size, token=token)
    hub.start()
    return hub


def subprocess_env(home: Path, endpoint: str) -> dict[str, str]:
    """Environment for an `atlas` subprocess talking to a local Hub."""
    env = dict(os.environ)
    env.update(
        ATLAS_HOME=str(home),
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home / "hf"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONUNBUFFERED="1",
    )
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "ATLAS_DATABASE_URL"):
        env.pop(name, None)
    return env


def atlas_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "atlas", *args]


def parse_json(text: str) -> object:
    return json.loads(text)
