"""The offline demo: the main job, end to end, on the embedded default store.

It serves the test model zoo from a local Hugging Face Hub on 127.0.0.1 (the real Hub is not
needed), then runs what a user runs: `atlas sync` twice (the second finds nothing new),
`atlas models list`, `atlas nearest`, `atlas map refresh`, `atlas export` and two analyses.
Everything lands under ATLAS_HOME (SQLite, indexes, exports).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def atlas(*args: str, env: dict[str, str]) -> None:
    """Run one atlas command as a user would; stop the demo if it fails."""
    print(f"\n$ atlas {' '.join(args)}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "atlas", *args], check=True, env=env)


def main() -> None:
    from atlas import Atlas
    from atlas.testing.demo_hub import start_demo_hub

    with Atlas() as a:
        home = a.settings.home
        a.ensure_sample()
    print(f"atlas home: {home}", file=sys.stderr)
    print("building the tiny model zoo and serving it from a local Hub ...", file=sys.stderr)
    hub = start_demo_hub(home / "demo-hub")
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home / "hf-home")}
    env.pop("HF_TOKEN", None)
    export_dir = Path(home) / "export"
    try:
        atlas("sync", "--textset", "sample", env=env)
        atlas("sync", "--textset", "sample", env=env)
        atlas("models", "list", env=env)
        atlas("nearest", "atlas-zoo/llama-chat-a", "-k", "5", "--textset", "sample", env=env)
        atlas("map", "refresh", "--method", "tsne", "--textset", "sample", env=env)
        atlas("export", str(export_dir), env=env)
        atlas("analyze", "pmi", "--textset", "sample", env=env)
        atlas("analyze", "lineage", "--textset", "sample", env=env)
        atlas("status", env=env)
    finally:
        hub.stop()
    print(f"\nopen {export_dir / 'map.html'} in a browser to explore the map", file=sys.stderr)


if __name__ == "__main__":
    main()
