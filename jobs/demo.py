"""The offline demo: the main job on the embedded default store (SQLite under ATLAS_HOME)."""

from __future__ import annotations

import subprocess
import sys


def atlas(*args: str) -> None:
    """Run one atlas command as a user would, stopping the demo if it fails."""
    print(f"$ atlas {' '.join(args)}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "atlas", *args], check=True)


def main() -> None:
    from atlas import Atlas

    with Atlas() as a:
        a.ensure_sample()
    atlas("textset", "list")
    atlas("textset", "show", "sample", "--limit", "2")
    atlas("status")


if __name__ == "__main__":
    main()
