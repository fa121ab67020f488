"""The SQLite backend: every SQLite statement pods runs, with its connections,
write transactions, schema versions and file-level operations (create, check,
back up).

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
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

from .common import COPY_COLUMNS, Dialect, SQLStorage, counted, new_key_id, require_no_rows, verified
from .interface import NotPodsDatabase, OperatorStorage, Row, RowsOf, SchemaTooNew, utc_now
from .migrations import version_history

BUSY_TIMEOUT_MS = 5000
REPLICATED_CHECKPOINT_PAGES = 10_000  # about 40 MB of WAL: see SQLiteStorage.__init__
PROBE_BUSY_TIMEOUT_MS = 500  # a health check answers within a second, locked or not

# schema.sql is version 1, frozen. sqlite_migrations/NNNN-*.sql takes a database
# from version NNNN - 1 to NNNN. Each script opens its own transaction and sets
# user_version before COMMIT, because executescript() commits whatever
# transaction was open before it runs.
SCHEMA, *MIGRATIONS = version_history(files(__package__) / "sqlite_migrations", files("pods") / "schema.sql")
SCHEMA_VERSION = 1 + len(MIGRATIONS)

# SQLite's companion files: the write-ahead log, its shared-memory index, and the
# rollback journal. Each holds part of the database while it is in use.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")

POD_COLUMNS = "pod_id, name, client_id, created_at"
_CALLER_LOOKUP = (
    "SELECT k.org_id, o.name AS org_name, k.key_id, k.pod_id, k.permissions, k.expires_at, k.used_at{pod}"
    " FROM api_key k JOIN organization o ON o.org_id = k.org_id{join}"
    " WHERE k.key_hash = ? AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?)"
)
CALLER_LOOKUP = _CALLER_LOOKUP.format(pod="", join="")
CALLER_AND_POD_LOOKUP = _CALLER_LOOKUP.format(
    pod=", p.pod_id AS path_pod_id, p.name AS path_pod_name, p.client_id AS path_pod_client_id,"
        " p.created_at AS path_pod_created_at",
    join=" LEFT JOIN pod p ON p.pod_id = ? AND p.org_id = k.org_id",
)
KEY_COLUMNS = "key_id, prefix, name, pod_id, permissions, created_at, updated_at, expires_at, used_at"
# Times are stored as utc_text already: read and given as they are.
DIALECT = Dialect(param="?", time_param="?", now="?", pod_columns=POD_COLUMNS, key_columns=KEY_COLUMNS)

log = logging.getLogger("pods.db")
_write_lock = threading.Lock()


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


def connect(path: str, busy_timeout_ms: int | None = None, read_only: bool = False,
            checkpoint_pages: int | None = None) -> sqlite3.Connection:
    """Open an existing database with the PRAGMAs every connection needs.

    ``read_only`` changes nothing in the file, not even at close (a read-write
    connection that closes last folds the WAL back into the database). On read-only
    storage, a database with no WAL to read is opened as immutable.
    ``checkpoint_pages``: the WAL's size at which a commit checkpoints (SQLite's
    default, 1,000, when None).

    :raise sqlite3.OperationalError: no file at ``path`` ("unable to open database file").
    """
    timeout_ms = BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms
    # mode=rw: SQLite's default would create a missing file, with the umask's mode.
    uri = "file:" + urllib.parse.quote(path) + ("?mode=ro" if read_only else "?mode=rw")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout_ms / 1000)
        if read_only:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opening is lazy: open now
    except sqlite3.OperationalError:
        # A WAL database needs its -shm file, which read-only storage cannot hold;
        # with no -wal beside it (a backup, say), all of it is in the file itself.
        if not read_only or os.path.exists(path + "-wal") or os.access(os.path.dirname(path) or ".", os.W_OK):
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL: in WAL mode NORMAL survives a process crash but can lose the last commits
    # on power loss, and edge devices lose power.
    conn.execute("PRAGMA synchronous = FULL")
    if checkpoint_pages is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint_pages)}")
    return conn


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
def _columns_at(version: int) -> dict[str, frozenset[str]]:
    """The tables schema ``version`` has, with their columns, found by building it in
    memory, so that a new migration needs no list kept by hand."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for script in _scripts()[:version]:
            conn.executescript(script.read_text())
        return {table: _columns(conn, table) for table in _tables(conn)}
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, table: str) -> frozenset[str]:
    # Lower case: SQLite's names are case-insensitive ("NAME" answers a query for name).
    return frozenset(row[0].lower() for row in conn.execute("SELECT name FROM pragma_table_info(?)", (table,)))


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
    expected = _columns_at(version)
    missing = expected.keys() - tables
    if missing:
        raise NotPodsDatabase(
            f"database {path} is not a pods database: schema version {version} "
            f"without table(s) {_names(missing)}"
        )
    columns = [f"{table}.{column}" for table in expected for column in expected[table] - _columns(conn, table)]
    if columns:
        raise NotPodsDatabase(
            f"database {path} is not a pods database: schema version {version} "
            f"without column(s) {_names(columns)}"
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
    sqlite3 shell) may hold the WAL for minutes. Not called while replicating
    (``serving/replication.py``): truncating the WAL is safe for Litestream, which
    notices and starts over from a full snapshot, but that snapshot would be uploaded
    at every start. Then the WAL stays, which loses
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
    writing (WAL readers do not block writers). It is safe beside Litestream (--replica):
    ``source`` is a read-only connection (``pods backup``), which never checkpoints,
    not even at close, and a reader can neither restart nor truncate the WAL that
    Litestream copies; the copy's own journal-mode change is made in the new file. It is written to ``dest.partial``
    (owner-only), checked, and only then renamed into place: one file, in rollback
    journal mode (serving it switches it to WAL again).

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
            # One self-contained file: in WAL mode (the source's), every later reader would leave
            # -wal and -shm files beside it, and the next backup --force would refuse them.
            out.execute("PRAGMA journal_mode = DELETE")
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


# -- the storage the server and the CLI use ------------------------------------------


class SQLiteStorage(SQLStorage):
    """The pods database in the SQLite file ``path`` (see ``interface.OperatorStorage``).

    Each thread has its own connection, opened on first use. Times come from this
    machine's clock (``clock``, when one is set), taken under the write lock, so
    that this process's pods get created_at values in commit order.
    """

    dialect = DIALECT
    unavailable = (sqlite3.OperationalError,)  # locked past the busy timeout, disk full, file gone
    target_version = SCHEMA_VERSION

    def __init__(self, path: str, read_only: bool = False, replicated: bool = False):
        super().__init__(description=path)
        self.path = path
        self.read_only = read_only
        # Replicated (--replica), Litestream checkpoints the WAL once it has copied it
        # (at 1,000 pages, as SQLite would); requests' commits then checkpoint only past
        # REPLICATED_CHECKPOINT_PAGES, should Litestream be down. Each of their
        # checkpoints, beside Litestream's read transaction, could copy only the frames
        # it had released, and tried again at every commit: creates at 8 connections
        # ran at 0.93x of a server without --replica, 0.98x with this (bench/replication.py).
        self.checkpoint_pages = REPLICATED_CHECKPOINT_PAGES if replicated else None
        self._local = threading.local()

    def _now(self) -> str:
        return self._clock_now() or utc_now()

    # -- connections ----------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, read_only=self.read_only,
                                              checkpoint_pages=self.checkpoint_pages)
        return conn

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.connection().execute(statement, params).fetchall()

    def _one(self, statement: str, params: Sequence[Any] = ()) -> Row | None:
        return self.connection().execute(statement, params).fetchone()

    def _tables(self, conn: sqlite3.Connection) -> set[str]:
        return set(_tables(conn))

    def end_request(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.in_transaction:
            conn.execute("ROLLBACK")  # a request never leaves a transaction (and its locks) open

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def end_thread(self) -> None:
        self.close()  # a thread's connection is all it holds

    def ping(self) -> None:
        """Raise sqlite3.OperationalError unless the database can be read, and, after a
        request found it unavailable (locked, full), written again (``probe_write``)."""
        try:
            self.connection().execute("SELECT count(*) FROM sqlite_master").fetchone()
            if self.write_failed:
                self.probe_write()
                self.write_failed = False
        except sqlite3.Error as e:
            self.close()  # reconnect next time: the file may have been replaced or repaired
            raise sqlite3.OperationalError(str(e)) from e

    def probe_write(self) -> None:
        """Commit a write that takes new pages and gives them back: it fails while the
        database is locked past a short wait or the disk is full, and leaves nothing."""
        conn = self.connection()
        conn.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_TIMEOUT_MS}")
        try:
            with write_tx(conn):
                conn.execute("INSERT INTO setting (key, value) VALUES ('healthz-probe', zeroblob(16384))")
                conn.execute("DELETE FROM setting WHERE key = 'healthz-probe'")
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    # -- the database as a whole (operator commands) ------------------------------

    def exists(self) -> bool:
        """Whether the file is there."""
        return os.path.exists(self.path)

    def schema_version(self, empty_ok: bool = False) -> int:
        """The database's schema version, checked (module-level ``schema_version``,
        which says what it raises)."""
        return schema_version(self.connection(), self.path, empty_ok)

    def prepare(self) -> None:
        """Serving: create the database if it is missing and bring it to the current
        schema (``init_db``)."""
        init_db(self.path)

    def migrate(self) -> None:
        """Bring an existing database to the current schema (``init_db``).

        :raise sqlite3.OperationalError: there is no file.
        """
        init_db(self.path, create=False)

    def create(self) -> None:
        """``init``: a new database, owner-only, at the current schema.

        :raise FileExistsError: something is at the path already.
        """
        create_file(self.path)
        init_db(self.path, create=False)

    def discard_new(self) -> None:
        """Remove the file ``create`` (or ``prepare``) made, and its companions."""
        self.close()
        remove_files(self.path)

    def problems(self) -> list[str]:
        """SQLite's integrity and foreign-key checks (``integrity_problems``)."""
        return integrity_problems(self.connection())

    def checkpoint(self) -> None:
        """At shutdown, once no request runs: fold the WAL back (module-level ``checkpoint``)."""
        self.close()
        checkpoint(self.path)

    def backup(self, dest: str) -> None:
        """SQLite's online backup API (module-level ``backup``, which says what it raises)."""
        backup(self.connection(), dest)

    def is_same_database_as(self, other: OperatorStorage) -> bool:
        """Whether ``other`` is a SQLite storage of the same file, however spelled."""
        return isinstance(other, SQLiteStorage) and same_file(self.path, other.path)

    @contextmanager
    def snapshot(self) -> Iterator[RowsOf]:
        """One consistent read of the whole database (``copy``'s source): yields
        ``rows(table)``, an iterator of the table's rows as COPY_COLUMNS tuples."""
        conn = self.connection()
        conn.execute("BEGIN")  # the first read fixes the snapshot (WAL: writers go on)
        try:
            yield lambda table: (
                tuple(row) for row in conn.execute(f"SELECT {', '.join(COPY_COLUMNS[table])} FROM {table} ORDER BY 1")
            )
        finally:
            conn.execute("COMMIT")

    def import_all(self, rows_of: RowsOf) -> dict[str, int]:
        copied = dict.fromkeys(COPY_COLUMNS, 0)
        conn = self.connection()
        with write_tx(conn):
            require_no_rows(self._row_counts(conn))
            for table, columns in COPY_COLUMNS.items():
                marks = ", ".join("?" * len(columns))
                insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                conn.executemany(insert, counted(rows_of(table), copied, table))
            return verified(copied, self._row_counts(conn))

    def setting(self, key: str, make_value: Callable[[], bytes]) -> bytes:
        conn = self.connection()
        row = conn.execute("SELECT value FROM setting WHERE key = ?", (key,)).fetchone()
        if row is not None:  # the usual case: no write lock needed
            return row[0]
        with write_tx(conn):
            conn.execute(
                "INSERT INTO setting (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, make_value()),
            )
            return conn.execute("SELECT value FROM setting WHERE key = ?", (key,)).fetchone()[0]

    # -- organizations and keys ---------------------------------------------------

    def caller_for_key_hash(self, key_hash: str, pod_id: str | None = None) -> Row | None:
        if pod_id is None:
            return self._one(CALLER_LOOKUP, (key_hash, self._now()))
        return self._one(CALLER_AND_POD_LOOKUP, (pod_id, key_hash, self._now()))

    def _time_no_key_is_written(self) -> str | None:
        # The write lock, tried without waiting: a key's created_at is read under it.
        conn = self.connection()
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            now = self._now()
            conn.execute("ROLLBACK")
            return now
        except sqlite3.OperationalError:  # a write under way
            return None
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _insert_api_key(self, org_name: str, key_hash: str, prefix: str, name: str | None, pod_id: str | None,
                        permissions: str | None, expires_at: str | None,
                        before_commit: Callable[[Row], None] | None, only_if_first: bool) -> Row | None:
        conn = self.connection()
        with write_tx(conn):
            now = self._now()  # under the write lock: _time_no_key_is_written relies on it
            if only_if_first and conn.execute("SELECT 1 FROM api_key LIMIT 1").fetchone() is not None:
                return None
            conn.execute(
                "INSERT INTO organization (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                (org_name, now),
            )
            org_id = conn.execute("SELECT org_id FROM organization WHERE name = ?", (org_name,)).fetchone()[0]
            if pod_id is not None and conn.execute(
                "SELECT 1 FROM pod WHERE pod_id = ? AND org_id = ?", (pod_id, org_id)
            ).fetchone() is None:
                raise LookupError(f"no pod {pod_id} in organization {org_name}")
            row = conn.execute(
                f"INSERT INTO api_key (key_id, org_id, pod_id, key_hash, prefix, name, permissions,"
                f" created_at, updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT (key_hash) DO UPDATE SET prefix = excluded.prefix WHERE api_key.prefix = ''"
                f" RETURNING {KEY_COLUMNS}",
                (new_key_id(), org_id, pod_id, key_hash, prefix, name or prefix, permissions,
                 now, now, expires_at),
            ).fetchone()
            if row is None:  # stored before, and nothing to add
                row = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_key WHERE key_hash = ?", (key_hash,)).fetchone()
            if before_commit is not None:
                before_commit(row)
        return row

    def list_api_keys(self) -> list[Row]:
        return self._query(
            "SELECT k.key_id, o.name AS org_name, k.created_at, k.revoked_at, k.name, k.pod_id,"
            " k.expires_at, k.permissions, k.prefix, k.used_at FROM api_key k"
            " JOIN organization o ON o.org_id = k.org_id ORDER BY k.created_at, k.key_id"
        )

    def list_organizations(self) -> list[Row]:
        return self._query(
            "SELECT o.name, o.created_at,"
            " (SELECT count(*) FROM api_key k WHERE k.org_id = o.org_id AND k.revoked_at IS NULL) AS keys,"
            " (SELECT count(*) FROM pod p WHERE p.org_id = o.org_id) AS pods"
            " FROM organization o ORDER BY o.created_at, o.name"
        )

    def is_new_organization(self, name: str) -> bool:
        return self.connection().execute(
            "SELECT EXISTS (SELECT 1 FROM api_key k JOIN organization o ON o.org_id = k.org_id WHERE o.name = ?)"
            " OR EXISTS (SELECT 1 FROM pod p JOIN organization o ON o.org_id = p.org_id WHERE o.name = ?)",
            (name, name),
        ).fetchone()[0] == 0

    def revoke_api_key(self, key_id: str) -> str | None:
        conn = self.connection()
        with write_tx(conn):
            conn.execute(
                "UPDATE api_key SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (self._now(), key_id),
            )
            row = conn.execute("SELECT revoked_at FROM api_key WHERE key_id = ?", (key_id,)).fetchone()
        return row[0] if row else None

    def update_key(self, org_id: int, key_id: str, name: str | None, permissions: str | None,
                   set_permissions: bool, check: Callable[[Row], None] | None = None) -> Row | None:
        conn = self.connection()
        with write_tx(conn):
            if check is not None:
                row = conn.execute(DIALECT.find_key, (key_id, org_id)).fetchone()
                if row is None:
                    return None
                check(row)
            # In SET, columns are the row's values before the update.
            return conn.execute(
                f"UPDATE api_key SET name = coalesce(:name, name),"
                f" permissions = CASE WHEN :set THEN :permissions ELSE permissions END,"
                f" updated_at = CASE WHEN coalesce(:name, name) IS NOT name"
                f" OR (:set AND :permissions IS NOT permissions) THEN :now ELSE updated_at END"
                f" WHERE key_id = :key_id AND org_id = :org_id AND revoked_at IS NULL RETURNING {KEY_COLUMNS}",
                {"name": name, "set": set_permissions, "permissions": permissions, "now": self._now(),
                 "key_id": key_id, "org_id": org_id},
            ).fetchone()

    def delete_key(self, org_id: int, key_id: str) -> bool:
        conn = self.connection()
        with write_tx(conn):
            cur = conn.execute(
                "UPDATE api_key SET revoked_at = ? WHERE key_id = ? AND org_id = ? AND revoked_at IS NULL",
                (self._now(), key_id, org_id),
            )
        return cur.rowcount == 1

    def record_key_use(self, used: dict[str, str]) -> None:
        conn = self.connection()
        with write_tx(conn):
            conn.executemany(
                "UPDATE api_key SET used_at = ? WHERE key_id = ? AND (used_at IS NULL OR used_at < ?)",
                [(at, key_id, at) for key_id, at in used.items()],
            )

    # -- pods ---------------------------------------------------------------------

    def insert_pod(self, org_id: int, name: str | None, client_id: str | None) -> Row:
        pod_id = str(uuid.uuid4())
        conn = self.connection()
        with write_tx(conn):
            # The timestamp is taken under the write lock, so this process's pods get
            # created_at values in commit order.
            row = conn.execute(
                f"INSERT INTO pod (pod_id, org_id, name, client_id, created_at)"
                f" VALUES (?, ?, ?, ?, ?) ON CONFLICT (org_id, client_id) DO NOTHING"
                f" RETURNING {POD_COLUMNS}",
                (pod_id, org_id, name or client_id or pod_id, client_id, self._now()),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    f"SELECT {POD_COLUMNS} FROM pod WHERE org_id = ? AND client_id = ?",
                    (org_id, client_id),
                ).fetchone()
        return row

    def delete_pod(self, org_id: int, pod_id: str) -> bool:
        conn = self.connection()
        with write_tx(conn):
            conn.execute("DELETE FROM api_key WHERE pod_id = ? AND org_id = ?", (pod_id, org_id))
            cur = conn.execute("DELETE FROM pod WHERE pod_id = ? AND org_id = ?", (pod_id, org_id))
        return cur.rowcount == 1


    # -- what metrics read ------------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        """Organizations, keys that authenticate (not revoked or deleted) and pods,
        counted exactly in one read. SQLite counts a whole table from its smallest
        index's pages without reading the rows (50 ms for a million pods, measured);
        the keys' count reads their rows (a quarter of a second for a million), so
        the caller decides how often to ask (pods/serving/exporter.py)."""
        row = self.connection().execute(
            "SELECT (SELECT count(*) FROM organization), (SELECT count(*) FROM api_key WHERE revoked_at IS NULL),"
            " (SELECT count(*) FROM pod)"
        ).fetchone()
        return {"organizations": row[0], "api_keys": row[1], "pods": row[2]}

    def pool_stats(self) -> None:
        """No pool: each thread has its own connection."""
        return None

    def error_kind(self, error: BaseException) -> str | None:
        """What a database error escaping an operation was: "locked" (busy past the
        busy timeout), "unavailable" (the file gone, unreadable, the disk full),
        "other" (any other SQLite error); None for anything else."""
        if isinstance(error, sqlite3.OperationalError):
            if getattr(error, "sqlite_errorcode", None) is None and isinstance(error.__cause__, sqlite3.Error):
                error = error.__cause__  # ping's own OperationalError, raised from SQLite's
            code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code of an extended one
            return "locked" if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) else "unavailable"
        return "other" if isinstance(error, sqlite3.Error) else None
