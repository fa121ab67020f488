"""Where the SQL scripts that build and upgrade a database are found.

Every reader of schema or migration files goes through ``version_history``, which
reads them as package data (``importlib.resources``), never by a path relative to
the source tree: a clone, an editable install, a wheel and ``pods.pyz`` (a zip)
all find them the same way. ``pods/schema.sql`` is a symlink to the top-level
``schema.sql``; builds copy its content into the wheel and the sdist.
"""

import re
from importlib.resources.abc import Traversable

MIGRATION_NAME = re.compile(r"[0-9]{4}-.+\.sql")


def version_history(migrations: Traversable, baseline: Traversable | None = None) -> list[Traversable]:
    """The scripts that take a new database to the current version, in order.

    Script ``i`` takes a database from version ``i`` to ``i + 1``: ``baseline``, if
    given, is version 1; then every ``NNNN-*.sql`` in the folder ``migrations``, by
    name (``NNNN`` is the version the script makes).
    """
    steps = sorted((p for p in migrations.iterdir() if MIGRATION_NAME.fullmatch(p.name)), key=lambda p: p.name)
    return ([baseline] if baseline is not None else []) + steps


def schema_versions() -> dict[str, int]:
    """The schema version each backend brings a database to, counted from the scripts
    (no driver is loaded: ``pods --version`` works without psycopg)."""
    from importlib.resources import files

    here = files(__package__)
    return {
        "SQLite": len(version_history(here / "sqlite_migrations", files("pods") / "schema.sql")),
        "PostgreSQL": len(version_history(here / "postgres_migrations")),
    }
