"""Where pods keeps its data: ``--db`` names a SQLite file (the default) or a
PostgreSQL database (a ``postgresql://`` URL).

The views and authentication use a ``Storage``, the CLI an ``OperatorStorage``
(``interface.py``), and never a database driver or a backend module: what the CLI
needs of SQLite files as such (``companions``, ``database_file_suffix``) is here.
Each backend module holds every statement it runs; ``common.py`` those the two
share.
"""

import os
import sys

from .interface import (
    NotEmpty,
    NotPodsDatabase,
    OperatorStorage,
    SchemaTooNew,
    Storage,
    UnusableDatabase,
    utc_now,
    utc_text,
)
from .url import redact, scrub

__all__ = [
    "BackendMissing", "NotEmpty", "NotPodsDatabase", "OperatorStorage", "SchemaTooNew", "Storage",
    "UnusableDatabase", "companions", "database_file_suffix", "describe", "driver_errors", "error_text",
    "is_url", "open_storage", "same_database", "utc_now", "utc_text",
]

URL_SCHEMES = ("postgresql://", "postgres://")


class BackendMissing(UnusableDatabase):
    """The backend a URL asks for is not installed."""


# What the postgres extra of pyproject.toml installs (tests/cli/test_packaging.py keeps
# the two alike), for the one-line hint of a pods installed without it.
POSTGRES_REQUIREMENTS = ("psycopg[binary]>=3.2,<4", "psycopg-pool>=3.3,<3.4")


def running_from_zip() -> bool:
    """Whether this pods runs from a zip (``pods.pyz``), not from installed files."""
    import zipimport

    spec = sys.modules["pods"].__spec__
    return spec is not None and isinstance(spec.loader, zipimport.zipimporter)


def postgres_missing_message() -> str:
    """One line: PostgreSQL's driver is missing, and the command that installs it
    into this very pods (never a package index's other "pods")."""
    if running_from_zip():
        return (
            "pods.pyz serves SQLite only: a zip cannot carry PostgreSQL's driver (psycopg, compiled code). For"
            " PostgreSQL, install pods as a package from a clone of its repository:"
            " /usr/bin/python3 -m venv /opt/pods && /opt/pods/bin/pip install '.[postgres]' (in the clone),"
            " then run /opt/pods/bin/pods"
        )
    import shlex

    command = " ".join([shlex.quote(sys.executable), "-m", "pip", "install", *map(shlex.quote, POSTGRES_REQUIREMENTS)])
    return (
        f"a postgresql:// database needs the postgres extra (psycopg), not installed with this pods: {command}"
        f" (or, in a clone of pods: pip install '.[postgres]')"
    )


def is_url(target: str) -> bool:
    # Any case: "POSTGRESQL://..." taken for a file name would put its password in messages.
    return target.lower().startswith(URL_SCHEMES)


def _lower_scheme(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme.lower()}://{rest}"  # libpq knows the scheme in lower case only


def same_database(a: str, b: str) -> bool:
    """Whether two ``--db`` values name one database: the same file however spelled
    (relative, symlinked), or URLs that connect alike whatever their password."""
    if is_url(a) and is_url(b):
        try:
            from .postgres import connects_to
        except ImportError:  # without the postgres extra: as written
            return a == b
        try:
            return connects_to(_lower_scheme(a)) == connects_to(_lower_scheme(b))
        except ValueError:  # a URL libpq cannot read: as written
            return a == b
    if is_url(a) or is_url(b):
        return False
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def open_storage(target: str, read_only: bool = False, threads: int | None = None,
                 replicated: bool = False) -> OperatorStorage:
    """The storage ``target`` names: a PostgreSQL URL, else a SQLite file path.
    Opens nothing yet: connections come on first use. ``read_only``: for commands
    that only read, so that they change nothing at all in a SQLite file.
    ``threads``: serving with that many request threads (PostgreSQL: a pool with a
    connection for each, one for the key-use recorder, and one for the main
    thread's last record of key uses at shutdown). ``replicated``: a SQLite file
    Litestream replicates (``--replica``), which checkpoints it.

    :raise BackendMissing: a PostgreSQL URL, and psycopg is not installed.
    """
    if is_url(target):
        try:
            from .postgres import PostgresStorage
        except ImportError:
            raise BackendMissing(postgres_missing_message()) from None
        return PostgresStorage(
            _lower_scheme(target), max_connections=None if threads is None else threads + 2, read_only=read_only
        )
    from .sqlite import SQLiteStorage

    return SQLiteStorage(target, read_only=read_only, replicated=replicated)


def describe(target: str) -> str:
    """``target`` as messages and logs show it: a URL without its password."""
    return redact(target) if is_url(target) else target


def error_text(error: BaseException, target: str) -> str:
    """A driver's ``error`` about ``target`` as one line, without a URL's password."""
    text = scrub(str(error), target) if is_url(target) else str(error)
    return " ".join(text.split())


def driver_errors() -> tuple[type[BaseException], ...]:
    """Every database driver's base exception, of the drivers in use (psycopg is
    loaded only with a PostgreSQL database, so only then can it raise)."""
    import sqlite3

    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error,) if psycopg is None else (sqlite3.Error, psycopg.Error)


def companions(path: str) -> list[str]:
    """The files beside the SQLite database ``path`` that hold part of it while it
    is in use (its write-ahead log, shared-memory index, rollback journal)."""
    from .sqlite import companions

    return companions(path)


def database_file_suffix(dest: str, source: str) -> str | None:
    """Which file of the SQLite database ``source`` the path ``dest`` names, however
    spelled: "" for the database file, "-wal", "-shm" or "-journal" for a
    companion, None for none of them."""
    from .sqlite import database_file_suffix

    return database_file_suffix(dest, source)
