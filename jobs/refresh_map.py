"""Job: refresh every stored map series and saved nearest-neighbour index from the store.

`atlas sync` already does this after it scores models; run this job after scoring by other
means (`atlas score`, a GPU worker) or on its own schedule. It takes the store's sync lock, so it
never runs while a sync writes; when a sync holds it, the job is skipped with exit code 0.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Refresh maps and indexes; print one line per refreshed item."""
    from atlas import Atlas
    from atlas.errors import LockHeld
    from atlas.space import index, maps
    from atlas.store.locking import store_lock

    with Atlas() as a:
        try:
            with store_lock(a.store, "sync", a.settings):
                for ts in a.textsets():
                    if index.saved_keys(a.settings, ts):
                        for key, done in index.refresh_indexes(a.store, a.settings, ts).items():
                            print(f"index {key}: {done.action}")
                for done in maps.refresh_all(a.store, a.settings):
                    print(f"map snapshot {done.snapshot.id}: {done.mode}")
        except LockHeld:
            print("skipped: an atlas sync holds the lock", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
