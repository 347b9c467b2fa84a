"""Alembic environment: runs on the connection handed over by ``migrate.upgrade``."""

from __future__ import annotations

from alembic import context

from celery_romancy.storage import open_store
from celery_romancy.storage.migrate import VERSION_TABLE
from celery_romancy.storage.schema import metadata

connection = context.config.attributes.get("connection")


def _run(conn: object) -> None:
    context.configure(
        connection=conn,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things in place
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:  # plain `alembic` command line, with sqlalchemy.url in the ini
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "set sqlalchemy.url, or use `python -m celery_romancy migrate`"
    # open_store picks the driver we ship (psycopg2) for a bare postgresql:// URL.
    with open_store(url)._create_engine().begin() as own:
        _run(own)
