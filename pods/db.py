"""SQLite connections, write transactions, and the schema's version history.

Every thread keeps one connection per database file (waitress's pool is fixed, so the
count stays bounded). Writers take one process-wide lock and then ``BEGIN IMMEDIATE``,
so threads queue on the lock and other processes (a second worker, the CLI) wait on
SQLite's busy timeout instead of failing with "database is locked".

A connection never creates a database file: ``create_file`` does, readable by its
owner only, and only serving and ``init`` call it.
"""

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import urllib.parse
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

# SQLite's companion files: the write-ahead log, its shared-memory index, and the
# rollback journal. Each holds part of the database while it is in use.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")

log = logging.getLogger("pods.db")
_local = threading.local()
_write_lock = threading.Lock()


class UnusableDatabase(Exception):
    """The file is not a pods database this version can use; the message says why."""


class NotPodsDatabase(UnusableDatabase):
    """A file that holds no pods database: empty, or another program's SQLite file."""


class SchemaTooNew(UnusableDatabase):
    """The database was written by a newer version of pods than this one."""


def create_file(path: str) -> None:
    """Create an empty database file, readable and writable by its owner only.

    SQLite gives the -wal and -shm files it creates later the same mode.

    :raise FileExistsError: something is already at ``path``.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)


def remove_files(path: str) -> None:
    """Remove a database file and its companions (only for a file this process
    has just created)."""
    for name in [path] + companions(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


def companions(path: str) -> list[str]:
    return [path + suffix for suffix in COMPANION_SUFFIXES]


def connect(path: str, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
    """Open an existing database with the PRAGMAs every connection needs.

    :raise sqlite3.OperationalError: no file at ``path`` ("unable to open database file").
    """
    timeout_ms = BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms
    # mode=rw: SQLite's default would create a missing file, with the umask's mode.
    uri = "file:" + urllib.parse.quote(path) + "?mode=rw"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout_ms / 1000)
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


# -- schema versions ------------------------------------------------------------


def _scripts() -> list:
    """The scripts that build the schema: script N takes version N to N + 1."""
    return [SCHEMA, *MIGRATIONS]


@functools.cache
def _tables_at(version: int) -> frozenset[str]:
    """The tables schema ``version`` has, found by building it in memory, so that a
    new migration needs no list kept by hand."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for script in _scripts()[:version]:
            conn.executescript(script.read_text())
        return _tables(conn)
    finally:
        conn.close()


def _tables(conn: sqlite3.Connection) -> frozenset[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return frozenset(row[0] for row in rows)  # SQLite's own tables left out


def schema_version(conn: sqlite3.Connection, path: str, empty_ok: bool = False) -> int:
    """The schema version of the pods database ``conn`` is open on, read without
    changing anything: a known version (1 to SCHEMA_VERSION) with every table it needs.
    With ``empty_ok``, an empty database (0 bytes, or SQLite with no tables) is version 0.

    :raise NotPodsDatabase: the file holds something else, or nothing.
    :raise SchemaTooNew: the file was written by a newer version of pods.
    :raise sqlite3.DatabaseError: the file is not a SQLite database at all.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = _tables(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database {path} has schema version {version}, "
            f"newer than this server's {SCHEMA_VERSION}; upgrade pods"
        )
    if version == 0 and not tables:
        if empty_ok:
            return 0
        what = "an empty file" if os.path.getsize(path) == 0 else "an empty SQLite database"
        raise NotPodsDatabase(f"database {path} is {what}, not a pods database")
    if version < 1:
        raise NotPodsDatabase(
            f"database {path} is not a pods database "
            f"(schema version {version}, tables: {_names(tables) or 'none'})"
        )
    missing = _tables_at(version) - tables
    if missing:
        raise NotPodsDatabase(
            f"database {path} is not a pods database: schema version {version} "
            f"without table(s) {_names(missing)}"
        )
    return version


def _names(names) -> str:
    return ", ".join(sorted(names))


def init_db(path: str, create: bool = True) -> None:
    """Bring the database at ``path`` to SCHEMA_VERSION (serving, ``init``, ``migrate``).

    With ``create``, a missing file is created (owner-only). An empty one (0 bytes,
    or a SQLite database with no tables) gets the whole schema. Each migration step
    is logged and runs in its own transaction, so a failing step changes nothing.

    :raise NotPodsDatabase: the file holds another program's data.
    :raise SchemaTooNew: the file was written by a newer version of pods.
    :raise sqlite3.OperationalError: no file at ``path`` and not ``create``.
    """
    if create:
        with contextlib.suppress(FileExistsError):  # another process may be creating it too
            create_file(path)
    conn = connect(path)
    try:
        version = schema_version(conn, path, empty_ok=True)
        # WAL is a property of the file; it cannot be switched inside a transaction.
        conn.execute("PRAGMA journal_mode = WAL")
        for step, script in enumerate(_scripts()[version:], start=version):
            if version > 0:  # an upgrade, not a new database
                log.info("migrating schema %d → %d", step, step + 1)
            try:
                conn.executescript(script.read_text(encoding="utf-8"))
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    finally:
        conn.close()


# -- shutdown, checks, backups ----------------------------------------------------


def checkpoint(path: str) -> None:
    """Fold the WAL back into the database file and truncate it (at shutdown).

    Never waits: a reader elsewhere (a backup, a replication tool, an operator's
    sqlite3 shell) may hold the WAL for minutes. Then the WAL stays, which loses
    nothing: it is part of the database, and SQLite folds it back later.
    """
    conn = connect(path, busy_timeout_ms=0)
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    except sqlite3.OperationalError as e:
        if e.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
        busy = 1
    finally:
        conn.close()
    if busy:
        log.warning(
            "WAL not truncated: another connection is using the database "
            "(nothing is lost: the WAL is part of the database, and SQLite folds it back later)"
        )


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """What SQLite's integrity and foreign-key checks report; empty when sound."""
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
    problems += [
        f"foreign key violation: {row[0]} row {row[1]} -> {row[2]}"
        for row in conn.execute("PRAGMA foreign_key_check")
    ]
    return problems


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: by device and inode when both exist (hard
    links, symlinks), else by their resolved paths."""
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return os.path.realpath(a) == os.path.realpath(b)


def database_file_suffix(dest: str, source: str) -> str | None:
    """Which file of the database at ``source`` ``dest`` names, however spelled:
    "" for the database file, "-wal", "-shm" or "-journal" for a companion, None
    for none of them."""
    # SQLite names the companions after the path it resolved, so try both spellings.
    for base in dict.fromkeys([source, os.path.realpath(source)]):
        for suffix in ("",) + COMPANION_SUFFIXES:
            if same_file(dest, base + suffix):
                return suffix
    return None


def backup(source: sqlite3.Connection, dest: str) -> None:
    """Copy the database ``source`` is open on to ``dest`` (replacing it) with
    SQLite's online backup API.

    The copy is one read transaction, so it is consistent while the server keeps
    writing (WAL readers do not block writers). It is written to ``dest.partial``
    (owner-only), checked, and only then renamed into place.

    :raise FileExistsError: ``dest.partial`` exists (left by an interrupted backup).
    :raise OSError: ``dest.partial`` cannot be created.
    :raise sqlite3.DatabaseError: the copy failed its integrity check.
    """
    partial = dest + ".partial"
    create_file(partial)
    try:
        out = connect(partial)
        try:
            source.backup(out)
        finally:
            out.close()
        copy = connect(partial)  # read back from the file, not from the writer's cache
        try:
            schema_version(copy, partial)
            problems = integrity_problems(copy)
        finally:
            copy.close()
        if problems:
            raise sqlite3.DatabaseError(f"backup failed its integrity check: {problems[0]}")
    except BaseException:
        remove_files(partial)
        raise
    os.replace(partial, dest)
