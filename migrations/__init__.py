"""Alembic migrations for the atlas store (installed as `atlas.migrations`)."""
