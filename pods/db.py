"""SQLite connections, write transactions, and the schema's version history.

Every thread keeps one connection per database file (waitress's pool is fixed, so the
count stays bounded). Writers take one process-wide lock and then ``BEGIN IMMEDIATE``,
so threads queue on the lock and other processes (a second worker, the CLI) wait on
SQLite's busy timeout instead of failing with "database is locked".
"""

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from flask import current_app

BUSY_TIMEOUT_MS = 5000
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"

# Entry n takes a database from version n + 1 to n + 2. Each script opens its own
# transaction and sets user_version before COMMIT, because executescript() commits
# whatever transaction was open before it runs.
MIGRATIONS: list[str] = []
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
        scripts = [SCHEMA_PATH.read_text()] + MIGRATIONS
        for script in scripts[version:]:
            try:
                conn.executescript(script)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    finally:
        conn.close()
