"""Job: export the newest map snapshot (JSON, CSV, vectors, PNG, web page) to a dated folder.

Usage: `python jobs/export_snapshot.py [DIRECTORY]`; the default is
`$ATLAS_HOME/exports/<UTC date>-snapshot-<id>`. Publish that folder as a static site or archive.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Export the newest snapshot; print the folder written."""
    from atlas import Atlas
    from atlas.errors import AtlasError

    args = list(sys.argv[1:] if argv is None else argv)
    with Atlas() as a:
        try:
            snapshots = a.map_snapshots()
            if not snapshots:
                print("no map snapshot yet: run `atlas sync` or `atlas map` first", file=sys.stderr)
                return 4
            newest = snapshots[0]
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            default = a.settings.export_dir / f"{stamp}-snapshot-{newest.id}"
            out = a.export(Path(args[0]) if args else default, newest.id)
        except AtlasError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
