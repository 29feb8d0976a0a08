"""The database of record: tables, engine and sessions, locks, and every SQL query."""

from atlas.store.db import Store

__all__ = ["Store"]
