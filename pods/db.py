"""SQLite connections, write transactions, and the schema's version history.

Every thread keeps one connection per database file (waitress's pool is fixed, so the
count stays bounded). Writers take one process-wide lock and then ``BEGIN IMMEDIATE``,
so threads queue on the lock and other processes (a second worker, the CLI) wait on
SQLite's busy timeout instead of failing with "database is locked".
"""

import contextlib
import os
import sqlite3
import threading
from contextlib import contextmanager

from flask import current_app

from .schemafiles import version_history

BUSY_TIMEOUT_MS = 5000

# schema.sql is version 1, frozen. migrations/NNNN-*.sql takes a database from
# version NNNN - 1 to NNNN. Each script opens its own transaction and sets
# user_version before COMMIT, because executescript() commits whatever
# transaction was open before it runs.
SCHEMA, *MIGRATIONS = version_history("pods", "schema.sql", "migrations")
SCHEMA_VERSION = 1 + len(MIGRATIONS)

_local = threading.local()
_write_lock = threading.Lock()


class SchemaTooNew(Exception):
    """The database was written by a newer version of pods than this one."""


def connect(path: str) -> sqlite3.Connection:
    """Open a connection with the PRAGMAs every connection needs."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL: in WAL mode NORMAL survives a process crash but can lose the last commits
    # on power loss, and edge devices lose power.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def get_db() -> sqlite3.Connection:
    """This thread's connection to the app's database, opened on first use."""
    path = current_app.config["DB"]
    conns = _thread_connections()
    conn = conns.get(path)
    if conn is None:
        conn = conns[path] = connect(path)
    return conn


def _thread_connections() -> dict:
    if not hasattr(_local, "conns"):
        _local.conns = {}
    return _local.conns


def close_thread_connection(path: str) -> None:
    """Close this thread's connection to ``path``, if it has one."""
    conn = _thread_connections().pop(path, None)
    if conn is not None:
        conn.close()


def rollback_open_transaction(_exc=None) -> None:
    """Teardown: a request must never leave a transaction (and its locks) open."""
    conn = _thread_connections().get(current_app.config["DB"])
    if conn is not None and conn.in_transaction:
        conn.execute("ROLLBACK")


@contextmanager
def write_tx(conn: sqlite3.Connection):
    """One write transaction at a time in this process; committed on a clean exit."""
    with _write_lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def init_db(path: str) -> None:
    """Bring the database at ``path`` to SCHEMA_VERSION, creating it if needed.

    :raise SchemaTooNew: the file was written by a newer version of pods.
    """
    conn = connect(path)
    try:
        # WAL is a property of the file; it cannot be switched inside a transaction.
        conn.execute("PRAGMA journal_mode = WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database {path} has schema version {version}, "
                f"newer than this server's {SCHEMA_VERSION}; upgrade pods"
            )
        scripts = [SCHEMA, *MIGRATIONS]
        for script in scripts[version:]:
            try:
                conn.executescript(script.read_text(encoding="utf-8"))
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    finally:
        conn.close()


def connect_existing(path: str) -> sqlite3.Connection:
    """connect(), but refuse to create a database that is not there."""
    if not os.path.isfile(path):
        raise sqlite3.OperationalError(f"no database file at {path}")
    return connect(path)


def checkpoint(path: str) -> None:
    """Fold the WAL back into the database file and truncate it (at shutdown)."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def integrity_problems(path: str) -> list[str]:
    """What SQLite's integrity and foreign-key checks report; empty when sound."""
    conn = connect_existing(path)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        problems += [
            f"foreign key violation: {row[0]} row {row[1]} -> {row[2]}"
            for row in conn.execute("PRAGMA foreign_key_check")
        ]
        return problems
    finally:
        conn.close()


def backup(source: str, dest: str) -> None:
    """Copy ``source`` to ``dest`` with SQLite's online backup API.

    The copy is one read transaction, so it is consistent while the server keeps
    writing (WAL readers do not block writers). It is written beside ``dest``,
    checked, and only then renamed into place.

    :raise sqlite3.DatabaseError: the copy failed its integrity check.
    """
    partial = dest + ".partial"
    src = connect_existing(source)
    try:
        try:
            out = sqlite3.connect(partial)
        except sqlite3.OperationalError as e:
            raise sqlite3.OperationalError(f"cannot write {partial}: {e}") from None
        try:
            src.backup(out)
        finally:
            out.close()
        problems = integrity_problems(partial)
        if problems:
            raise sqlite3.DatabaseError(f"backup failed its integrity check: {problems[0]}")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise
    finally:
        src.close()
    os.replace(partial, dest)
