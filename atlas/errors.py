"""Domain exceptions; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class AtlasError(Exception):
    """Base of every error atlas reports to a user."""

    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(AtlasError):
    """The user asked for something that cannot be done as asked."""

    exit_code = 2


class StoreUnavailable(AtlasError):
    """The database cannot be reached or opened."""

    exit_code = 3


class MigrationError(AtlasError):
    """The database schema could not be brought up to date."""

    exit_code = 3


class NotFound(AtlasError):
    """A named text set, model or snapshot is not in the store."""

    exit_code = 4


class TextSetError(AtlasError):
    """A text set file is malformed or conflicts with what is stored."""

    exit_code = 5


class LockHeld(AtlasError):
    """Another process holds the lock for this store."""

    exit_code = 6


class ModelFailure(AtlasError):
    """A model cannot be scored; `reason` is the short code recorded in the store."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message


class HubError(AtlasError):
    """The Hub could not be reached, or kept answering with errors."""
