"""Job: one `atlas sync` run, for system cron or a systemd timer.

Arguments are passed to `atlas sync` (e.g. `--textset tulu3-10k --limit 20`). Another sync
holding the store's lock is not an error here: this run is skipped with exit code 0, so cron
sends no mail for an overlap. Every other failure keeps `atlas`'s exit code.
"""

from __future__ import annotations

import sys

from atlas.errors import LockHeld


def main(argv: list[str] | None = None) -> int:
    """Run `atlas sync` with `argv`; an overlap with a running sync exits 0."""
    from atlas.cli import app
    from atlas.cli.common import run

    args = list(sys.argv[1:] if argv is None else argv)
    code = run(app, ["sync", *args])
    if code == LockHeld.exit_code:
        print("skipped: another atlas sync holds the lock", file=sys.stderr)
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
