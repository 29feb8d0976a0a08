"""The procrastinate app on the store's Postgres database, with atlas's tasks registered."""

from __future__ import annotations

from typing import Any

from atlas.queue import REFRESH_TASK, SCORE_TASK, tasks
from atlas.settings import Settings


def conninfo(url: str) -> str:
    """A libpq connection string for procrastinate from the store's SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def make_app(url: str, settings: Settings | None = None) -> Any:
    """A procrastinate App (not yet opened) whose tasks score and refresh this store."""
    import procrastinate

    settings = settings or Settings.from_env()
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(url), min_size=1, max_size=4, kwargs={"connect_timeout": 10}
    )
    app = procrastinate.App(connector=connector)
    app.task(
        name=SCORE_TASK, pass_context=True, retry=tasks.retry_strategy(settings),
    )(tasks.score_job)  # fmt: skip
    app.task(name=REFRESH_TASK, pass_context=True)(tasks.refresh_job)
    return app
