"""``python -m celery_romancy migrate --database-url URL``: apply the history migrations."""

from __future__ import annotations

import argparse
import sys

from .settings import DEFAULT_DATABASE_URL
from .storage import open_store
from .storage.migrate import current_revision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="celery-romancy")
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser("migrate", help="create or upgrade the history tables")
    migrate.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args(argv)
    store = open_store(args.database_url)
    with store.engine.connect() as conn:  # opening the engine migrates
        print(f"history schema at revision {current_revision(conn)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
