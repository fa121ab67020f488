"""The PostgreSQL backend: every PostgreSQL statement pods runs, with its connection
pool, schema versions and operator-level operations.

Any number of pods processes, on any number of machines, may serve one database:
nothing here is cached between requests, uniqueness is decided by the database's
indexes, times come from the database server's clock, and the schema is applied
under an advisory lock, so several instances starting at once apply it once.

Serving, connections come from a psycopg_pool pool, made in the process that uses
it (after a fork, never inherited). A request thread keeps one connection from one
request to the next; a connection that broke goes back to the pool, which replaces
it. Serving connections bound every statement and every lock wait
(STATEMENT_TIMEOUT) and notice a silent network within seconds (TCP keepalives and
tcp_user_timeout), and a connection that waits on a server that stopped answering
is cut (``watchdog.py``), so a stuck server or link costs a request a 503, not a
thread forever. An operator command uses one connection of its own, without those
bounds (a migration may take long), and so does applying the schema.

Tables are created in the connection's current schema (``public``, unless the URL
says otherwise, e.g. ``?options=-c%20search_path%3Dpods``).
"""

import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import _GeneratorContextManager, contextmanager  # the first: psycopg's own return type
from datetime import datetime
from importlib.resources import files
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row, tuple_row

from .common import (
    COPY_COLUMNS,
    TIME_COLUMNS,
    Dialect,
    SQLStorage,
    counted,
    new_key_id,
    only_row,
    require_no_rows,
    verified,
)
from .interface import NotPodsDatabase, OperatorStorage, Row, RowsOf, SchemaTooNew, UnusableDatabase
from .migrations import version_history
from .url import redact
from .watchdog import StallWatchdog

SCRIPTS = version_history(files(__package__) / "postgres_migrations")
SCHEMA_VERSION = len(SCRIPTS)
TABLES = ("organization", "pod", "api_key", "setting")  # in the order their rows can be inserted
VERSION_TABLE = "pods_schema"
# pg_advisory_xact_lock keys: any fixed numbers; SCHEMA_LOCK spells "pods".
SCHEMA_LOCK = 0x706F6473
FIRST_KEY_LOCK = SCHEMA_LOCK + 1  # instances starting at once on a new database make one first key
NEW_KEYS_LOCK = SCHEMA_LOCK + 2  # shared by keys' writes, taken alone by a look for new keys
POOL_CLOSE_WAIT = 1  # seconds shutdown waits for the pool's threads (connecting to a server that may not answer)
POOL_WAIT = 1  # seconds a request waits for a connection before its 503 (one per thread: only in an outage)
STATEMENT_TIMEOUT = "5s"  # a serving statement, or its wait for a lock, fails (503) after this
# Seconds a serving statement may wait on the server: past STATEMENT_TIMEOUT with a
# margin, and short enough that a request cut is answered within the shutdown grace.
STALL_LIMIT = 8.0
# Metrics' counts of rows: exact below this many rows (by the planner's estimate), estimated above.
EXACT_COUNT_BELOW = 100_000
COUNTED_ROWS = {
    "organizations": "FROM organization",
    "api_keys": "FROM api_key WHERE revoked_at IS NULL",
    "pods": "FROM pod",
}
PING_LOCK_TIMEOUT = "500ms"  # /healthz: a table locked this long is a table requests cannot read
# libpq settings, unless the URL gives its own.
LIBPQ_DEFAULTS = {
    "connect_timeout": "5",  # seconds to reach the server
    "application_name": "pods",  # how an operator finds them in pg_stat_activity
    # A server or link that goes silent is noticed in about 10 seconds, not the
    # kernel's default two hours (for an idle connection) or 15 minutes (unanswered data).
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
    "tcp_user_timeout": "10000",  # milliseconds
}
# psycopg_pool retries a lost connection after 1, 2, 4, 8 ... seconds: after an
# outage of a few seconds, service would come back long after the server did.
# A retry every second (with jitter) is cheap for a pool of a few connections.
psycopg_pool.base.AttemptWithBackoff.DELAY_BACKOFF = 1.0
RECONNECT_LOG_SECONDS = 60.0  # ... but its warning of a failed attempt at most once a minute


class FailedReconnectsSummary(logging.Filter):
    """psycopg_pool warns of every failed attempt to reconnect: with one a second,
    an outage would log a line a second per lost connection, an idle server too.
    Passes the first, then one a minute, saying how many were left out."""

    def __init__(self, interval: float = RECONNECT_LOG_SECONDS):
        super().__init__()
        self.interval = interval
        self.next_at = 0.0
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("error connecting"):
            return True
        now = time.monotonic()
        if now < self.next_at:
            self.left_out += 1
            return False
        if self.left_out:
            record.msg = f"{record.msg} ({self.left_out} more failed attempts since the last said)"
        self.next_at, self.left_out = now + self.interval, 0
        return True


logging.getLogger("psycopg.pool").addFilter(FailedReconnectsSummary())

log = logging.getLogger("pods.db")


def _text(column: str, alias: str | None = None) -> str:
    """A timestamptz column as every backend shows times: fixed-width RFC 3339 UTC
    with microseconds (what SQLite stores)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS {alias or column}"""


POD_COLUMNS = f"pod_id, name, client_id, {_text('created_at')}"
KEY_COLUMNS = (
    f"key_id, prefix, name, pod_id, permissions, {_text('created_at')}, {_text('updated_at')},"
    f" {_text('expires_at')}, {_text('used_at')}"
)
# The database server's clock, for every instance alike; one value throughout a
# statement, so that a row's created_at and updated_at agree to the microsecond.
# Its parameter is the storage's ``clock`` time: NULL unless one is set (tests).
NOW = "coalesce(%s::timestamptz, statement_timestamp())"
NOW_NAMED = "coalesce(%(now)s::timestamptz, statement_timestamp())"
DIALECT = Dialect(param="%s", time_param="%s::timestamptz", now=NOW, pod_columns=POD_COLUMNS,
                  key_columns=KEY_COLUMNS)
_CALLER_LOOKUP = (
    f"SELECT k.org_id, o.name AS org_name, k.key_id, k.pod_id, k.permissions,"
    f" {_text('k.expires_at', 'expires_at')}, {_text('k.used_at', 'used_at')}{{pod}}"
    f" FROM api_key k JOIN organization o ON o.org_id = k.org_id{{join}}"
    f" WHERE k.key_hash = %s AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > {NOW})"
)
CALLER_LOOKUP = _CALLER_LOOKUP.format(pod="", join="")
CALLER_AND_POD_LOOKUP = _CALLER_LOOKUP.format(
    pod=f", p.pod_id AS path_pod_id, p.name AS path_pod_name, p.client_id AS path_pod_client_id,"
        f" {_text('p.created_at', 'path_pod_created_at')}",
    join=" LEFT JOIN pod p ON p.pod_id = %s AND p.org_id = k.org_id",
)


def _libpq_settings(url: str) -> dict:
    """LIBPQ_DEFAULTS that ``url`` does not set itself (a URL libpq cannot read
    gets them all: connecting then fails with libpq's own message)."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        given = {}
    return {key: value for key, value in LIBPQ_DEFAULTS.items() if key not in given}


def connects_to(url: str) -> dict:
    """The parameters libpq connects with for ``url``, but its password.

    :raise ValueError: libpq cannot read ``url``.
    """
    try:
        return {key: value for key, value in conninfo_to_dict(url).items() if key != "password"}
    except psycopg.ProgrammingError as e:
        raise ValueError(str(e)) from None


class WatchedConnection(psycopg.Connection[DictRow]):
    """A serving connection: each statement tells the watchdog that it waits on the
    server (a transaction of several statements may take longer than one)."""

    watchdog: StallWatchdog | None = None

    def execute(self, *args: Any, **kwargs: Any) -> psycopg.Cursor[DictRow]:
        if self.watchdog is not None:
            self.watchdog.busy(self)
        return super().execute(*args, **kwargs)

    def transaction(self, *args: Any, **kwargs: Any) -> _GeneratorContextManager[psycopg.Transaction]:
        if self.watchdog is not None:  # its BEGIN waits on the server too
            self.watchdog.busy(self)
        return super().transaction(*args, **kwargs)


class PostgresStorage(SQLStorage):
    """The pods database at the ``postgresql://`` URL ``url`` (see
    ``interface.OperatorStorage``). Methods without a docstring of their own have
    the interface's."""

    dialect = DIALECT
    # ReadOnlySqlTransaction: a standby, or a primary set read-only, until failover ends.
    unavailable = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction, psycopg_pool.PoolTimeout)
    target_version = SCHEMA_VERSION

    def __init__(self, url: str, max_connections: int | None = None, read_only: bool = False):
        """``max_connections``: serve from a pool of up to that many connections;
        None: one connection, for an operator command."""
        super().__init__(description=redact(url))
        self.url = url
        self._libpq = _libpq_settings(url)
        self.max_connections = max_connections
        self._own: psycopg.Connection[DictRow] | None = None  # the one connection, without a pool
        self._pool: psycopg_pool.ConnectionPool[WatchedConnection] | None = None
        self._watchdog: StallWatchdog | None = None  # with the pool
        self._closed = False
        self._pool_lock = threading.Lock()
        self._local = threading.local()

    # -- connections ---------------------------------------------------------------

    def pool(self) -> psycopg_pool.ConnectionPool[WatchedConnection]:
        """The serving connections' pool, made on first use in this process.

        :raise psycopg_pool.PoolClosed: ``close`` was called.
        """
        if self._pool is None:
            with self._pool_lock:
                if self._closed:
                    raise psycopg_pool.PoolClosed(f"the storage for {self.description} is closed")
                if self._pool is None:
                    self._watchdog = StallWatchdog(STALL_LIMIT)
                    self._pool = psycopg_pool.ConnectionPool(
                        self.url,
                        connection_class=WatchedConnection,
                        min_size=1,
                        max_size=self.max_connections,
                        timeout=POOL_WAIT,
                        # autocommit: a statement alone commits; several go in conn.transaction()
                        kwargs={"autocommit": True, "row_factory": dict_row, **self._libpq},
                        configure=self._configure,
                        name="pods",
                        open=True,
                    )
        return self._pool

    def _configure(self, conn: WatchedConnection) -> None:
        """A new serving connection's limits (the pool's ``configure``)."""
        conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        conn.execute(f"SET lock_timeout = '{STATEMENT_TIMEOUT}'")
        conn.watchdog = self._watchdog

    def _connect(self) -> psycopg.Connection[DictRow]:
        # autocommit: a statement alone commits; several go in conn.transaction()
        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, **self._libpq)

    def connection(self) -> psycopg.Connection[DictRow]:
        """This thread's connection for the current request, borrowed on first use
        (or the command's own connection)."""
        if self.max_connections is None:
            if self._own is None or self._own.closed:
                self._own = self._connect()
            return self._own
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.pool().getconn()
        return conn

    def _read(self, statement: str, params: Sequence[Any] = ()) -> psycopg.Cursor[DictRow]:
        """Run a statement that changes nothing, outside a transaction. A connection
        kept from an earlier request, or waiting in the pool, may have been closed by
        the server meanwhile (a restart, a failover, an idle timeout): then the
        statement runs again on the next one, rather than a 503 for a server that is
        back. Not after the watchdog cut the connection: the server is not answering."""
        attempts = 1 if self.max_connections is None else self.max_connections + 1
        for attempt in range(1, attempts + 1):
            conn = self.connection()
            try:
                return conn.execute(statement, params)
            except psycopg.OperationalError:
                if attempt == attempts or not conn.broken or self._watchdog is None or self._watchdog.was_cut(conn):
                    raise
                self.end_thread()  # the pool replaces it
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._read(statement, params).fetchall())

    def _one(self, statement: str, params: Sequence[Any] = ()) -> Row | None:
        return self._read(statement, params).fetchone()

    def _storable(self, *ids: str) -> bool:
        """PostgreSQL text cannot hold NUL, so no row has an id with one, and the
        driver refuses to send one."""
        return not any("\x00" in i for i in ids)

    def _now(self) -> str | None:
        """The parameter of NOW: None, the database server's clock, unless ``clock`` is set."""
        return self._clock_now()

    def end_request(self) -> None:
        """A thread keeps its connection from one request to the next (fetching it
        from the pool and giving it back cost a tenth of a GET), unless it broke or
        was left in a transaction: then the pool gets it back, and rolls it back or
        replaces it."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
                self.end_thread()
            elif self._watchdog is not None:
                self._watchdog.idle()

    def end_thread(self) -> None:
        """This thread is done with the database: its connection goes back to the pool."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._watchdog is not None:
                self._watchdog.idle()
            self._local.conn = None
            self._give_back(conn)

    def _give_back(self, conn: WatchedConnection) -> None:
        pool = self._pool
        if pool is None:  # closed meanwhile, from another thread
            conn.close()
        else:
            pool.putconn(conn)

    def close(self) -> None:
        """Give this thread's connection back, close the command's own and the pool
        (waiting POOL_CLOSE_WAIT at most for its threads), and stop the watchdog."""
        self.end_thread()
        if self._own is not None:
            self._own.close()
        with self._pool_lock:
            self._closed = True
            if self._pool is not None:
                self._pool.close(timeout=POOL_CLOSE_WAIT)
                self._pool = None
                if self._watchdog is not None:
                    self._watchdog.stop()

    # -- schema ----------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the database can be reached (its operator creates it).

        :raise psycopg.OperationalError: it cannot, and not because it is missing.
        """
        try:
            self._connect().close()
        except psycopg.OperationalError as e:
            if "does not exist" in str(e):
                return False
            raise
        return True

    def _tables(self, conn: psycopg.Connection[DictRow]) -> set[str]:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        ).fetchall()
        return {row["table_name"] for row in rows}

    def schema_version(self, empty_ok: bool = False) -> int:
        return self._schema_version(self.connection(), empty_ok)

    def _schema_version(self, conn: psycopg.Connection[DictRow], empty_ok: bool = False) -> int:
        """The schema version of the pods database ``conn`` is open on, read without
        changing anything; with ``empty_ok``, a database without tables is version 0.

        :raise NotPodsDatabase: the database holds something else, or nothing.
        :raise SchemaTooNew: a newer pods wrote it.
        """
        tables = self._tables(conn)
        if VERSION_TABLE not in tables:
            if not tables and empty_ok:
                return 0
            found = ", ".join(sorted(tables)) or "none"
            raise NotPodsDatabase(f"database {self.description} is not a pods database (tables: {found})")
        versions = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchall()
        if len(versions) != 1:
            raise NotPodsDatabase(
                f"database {self.description} is not a pods database as this server knows one:"
                f" {VERSION_TABLE} holds {len(versions)} rows, not 1"
            )
        version: int = versions[0]["version"]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database {self.description} has schema version {version}, "
                f"newer than this server's {SCHEMA_VERSION}; upgrade pods"
            )
        missing = set(TABLES) - tables
        if missing:
            raise NotPodsDatabase(
                f"database {self.description} is not a pods database: schema version {version} "
                f"without table(s) {', '.join(sorted(missing))}"
            )
        # Versions 1 and 2 have the same columns (2 changes indexes only): those copy moves.
        rows = conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                            " WHERE table_schema = current_schema()").fetchall()
        present = {(row["table_name"], row["column_name"]) for row in rows}
        missing = {f"{t}.{c}" for t, columns in COPY_COLUMNS.items() for c in columns if (t, c) not in present}
        if missing:
            raise NotPodsDatabase(
                f"database {self.description} is not a pods database: schema version {version} "
                f"without column(s) {', '.join(sorted(missing))}"
            )
        return version

    def prepare(self) -> None:
        """Bring the database to SCHEMA_VERSION, creating the tables in an empty one.

        Several instances may start at once: each takes the same advisory lock
        first, so the schema is applied exactly once.

        :raise UnusableDatabase: the database is not in UTF8.
        """
        # A connection of its own: at start, an unreachable server is one clear
        # error at once, not a pool retrying in the background.
        with self._connect() as conn, conn.transaction():
            self._require_utf8(conn)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            version = self._schema_version(conn, empty_ok=True)
            if version == 0:
                conn.execute(f"CREATE TABLE {VERSION_TABLE} (version integer NOT NULL)")
                conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES (0)")
            for step, script in enumerate(SCRIPTS[version:], start=version):
                if version > 0:  # an upgrade, not a new database
                    log.info("migrating schema %d → %d", step, step + 1)
                conn.execute(script.read_text(encoding="utf-8"))
            conn.execute(f"UPDATE {VERSION_TABLE} SET version = %s", (SCHEMA_VERSION,))

    def migrate(self) -> None:
        """As ``prepare``: the database exists (its operator creates it)."""
        self.prepare()

    def _require_utf8(self, conn: psycopg.Connection[DictRow]) -> None:
        """Names are any Unicode text: a database in another encoding would refuse
        some of them, one request at a time (a 500 each), or, in SQL_ASCII, store
        bytes without checking them.

        :raise UnusableDatabase: it is not UTF8.
        """
        encoding = only_row(conn.execute("SHOW server_encoding").fetchone())["server_encoding"]
        if isinstance(encoding, bytes):  # SQL_ASCII: text comes back undecoded
            encoding = encoding.decode("ascii", "replace")
        if encoding != "UTF8":
            raise UnusableDatabase(
                f"database {self.description} has encoding {encoding}; pods needs UTF8"
                f" (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
            )

    def create(self) -> None:
        """``init``: give an empty database the pods schema.

        :raise FileExistsError: it holds a pods database already.
        """
        if self.schema_version(empty_ok=True) > 0:
            raise FileExistsError(f"database {self.description} is a pods database already")
        self.prepare()

    def discard_new(self) -> None:
        """Drop the tables ``create`` (or ``prepare``) made in the empty database."""
        conn = self.connection()
        with conn.transaction():
            for table in reversed((VERSION_TABLE, *TABLES)):
                conn.execute(f"DROP TABLE IF EXISTS {table}")

    def problems(self) -> list[str]:
        """What is wrong beyond the schema (PostgreSQL enforces the constraints and
        checks its own pages): nothing to report once the schema and the encoding check out."""
        self.schema_version()
        self._require_utf8(self.connection())
        return []

    def checkpoint(self) -> None:
        """Nothing to fold back at shutdown: the server owns its write-ahead log."""

    def backup(self, dest: str) -> None:
        """Not for PostgreSQL: ``copy`` it to a SQLite file, or use PostgreSQL's own tools.

        :raise NotImplementedError: always.
        """
        raise NotImplementedError(f"backup copies a SQLite database, not {self.description}")

    def is_same_database_as(self, other: OperatorStorage) -> bool:
        """Whether ``other`` is this very database and schema, however differently the
        URLs are spelled (a host name and its address, a default port written out):
        a lock taken here with a random key is looked for there (pg_locks shows every
        role's locks)."""
        if not isinstance(other, PostgresStorage):
            return False
        conn = self.connection()
        key = (secrets.randbits(31), secrets.randbits(31))
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)
            schema = only_row(conn.execute("SELECT current_schema() AS name").fetchone())["name"]
            found = only_row(other._one(
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
                " AND classid::bigint = %s AND objid::bigint = %s"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND current_schema() = %s", (*key, schema),
            ))
            return found["n"] > 0

    @contextmanager
    def snapshot(self) -> Iterator[RowsOf]:
        """One consistent read of the whole database (``copy``'s source), in one
        repeatable-read transaction: yields ``rows(table)``, an iterator of the
        table's rows as COPY_COLUMNS tuples, times as text."""
        conn = self.connection()
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

            def rows(table: str) -> Iterator[tuple[Any, ...]]:
                columns = ", ".join(_text(c) if c in TIME_COLUMNS else c for c in COPY_COLUMNS[table])
                with conn.cursor(row_factory=tuple_row) as cur:
                    cur.execute(f"SELECT {columns} FROM {table} ORDER BY 1")
                    while batch := cur.fetchmany(1000):
                        yield from ((*row[:-1], bytes(row[-1])) if table == "setting" else row for row in batch)

            yield rows

    def import_all(self, rows_of: RowsOf) -> dict[str, int]:
        copied = dict.fromkeys(COPY_COLUMNS, 0)
        conn = self.connection()
        with conn.transaction():
            conn.execute(f"LOCK TABLE {', '.join(COPY_COLUMNS)}")  # no instance writes meanwhile
            require_no_rows(self._row_counts(conn))
            for table, columns in COPY_COLUMNS.items():
                marks = ", ".join("%s::timestamptz" if c in TIME_COLUMNS else "%s" for c in columns)
                with conn.cursor() as cur:
                    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                    cur.executemany(insert, counted(rows_of(table), copied, table))
            # Organizations came with their ids; new ones continue after them.
            conn.execute("SELECT setval(pg_get_serial_sequence('organization', 'org_id'),"
                         " coalesce(max(org_id), 0) + 1, false) FROM organization")
            return verified(copied, self._row_counts(conn))

    def ping(self) -> None:
        """Raise one of ``unavailable`` unless the server answers, and reads the tables
        every request reads (a lock someone holds on one would make each request wait
        for its 503), and, after a request found it unavailable, takes writes again (a
        write it undoes)."""
        try:
            self._read("SELECT 1")  # on a kept connection the server closed: retried on a new one
            conn = self.connection()
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{PING_LOCK_TIMEOUT}'")
                conn.execute("SELECT (SELECT 1 FROM organization LIMIT 1), (SELECT 1 FROM api_key LIMIT 1),"
                             " (SELECT 1 FROM pod LIMIT 1)")
            if self.write_failed:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{PING_LOCK_TIMEOUT}'")
                    conn.execute("INSERT INTO setting (key, value) VALUES ('healthz-probe', '')"
                                 " ON CONFLICT (key) DO NOTHING")
                    conn.execute("DELETE FROM setting WHERE key = 'healthz-probe'")
                self.write_failed = False
        finally:
            self.end_request()

    def setting(self, key: str, make_value: Callable[[], bytes]) -> bytes:
        row = self._one("SELECT value FROM setting WHERE key = %s", (key,))
        if row is None:  # the first of several instances starting at once wins
            self.connection().execute(
                "INSERT INTO setting (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, make_value())
            )
            row = only_row(self._one("SELECT value FROM setting WHERE key = %s", (key,)))
        return bytes(row["value"])

    # -- organizations and keys ---------------------------------------------------

    def caller_for_key_hash(self, key_hash: str, pod_id: str | None = None) -> Row | None:
        if pod_id is None:
            return self._one(CALLER_LOOKUP, (key_hash, self._now()))
        # An id that cannot be stored (NUL) names no pod: the join finds none.
        return self._one(CALLER_AND_POD_LOOKUP, (pod_id if self._storable(pod_id) else None, key_hash, self._now()))

    def _time_no_key_is_written(self) -> datetime | None:
        # NEW_KEYS_LOCK, tried without waiting: every key's transaction holds it shared
        # from before its insert to its commit.
        conn = self.connection()
        with conn.transaction():
            free = conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS free", (NEW_KEYS_LOCK,)).fetchone()
            if not only_row(free)["free"]:
                return None
            return only_row(conn.execute(f"SELECT {NOW} AS now", (self._now(),)).fetchone())["now"]

    def _insert_api_key(self, org_name: str, key_hash: str, prefix: str, name: str | None, pod_id: str | None,
                        permissions: str | None, expires_at: str | None,
                        before_commit: Callable[[Row], None] | None, only_if_first: bool) -> Row | None:
        conn = self.connection()
        now = self._now()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (NEW_KEYS_LOCK,))  # _time_no_key_is_written
            if only_if_first:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (FIRST_KEY_LOCK,))
                if conn.execute("SELECT 1 FROM api_key LIMIT 1").fetchone() is not None:
                    return None
            conn.execute(
                f"INSERT INTO organization (name, created_at) VALUES (%s, {NOW}) ON CONFLICT (name) DO NOTHING",
                (org_name, now),
            )
            org_id = only_row(
                conn.execute("SELECT org_id FROM organization WHERE name = %s", (org_name,)).fetchone()
            )["org_id"]
            if pod_id is not None and conn.execute(
                "SELECT 1 FROM pod WHERE pod_id = %s AND org_id = %s FOR KEY SHARE", (pod_id, org_id)
            ).fetchone() is None:
                raise LookupError(f"no pod {pod_id} in organization {org_name}")
            row = conn.execute(
                f"INSERT INTO api_key (key_id, org_id, pod_id, key_hash, prefix, name, permissions,"
                f" created_at, updated_at, expires_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s, {NOW}, {NOW}, %s::timestamptz)"
                f" ON CONFLICT (key_hash) DO UPDATE SET prefix = excluded.prefix WHERE api_key.prefix = ''"
                f" RETURNING {KEY_COLUMNS}",
                (new_key_id(), org_id, pod_id, key_hash, prefix, name or prefix, permissions, now, now, expires_at),
            ).fetchone()
            if row is None:  # stored before, and nothing to add
                row = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_key WHERE key_hash = %s", (key_hash,)).fetchone()
            if before_commit is not None:
                before_commit(only_row(row))
        return row

    def list_api_keys(self) -> list[Row]:
        return self._query(
            f"SELECT k.key_id, o.name AS org_name, {_text('k.created_at', 'created_at')},"
            f" {_text('k.revoked_at', 'revoked_at')}, k.name, k.pod_id, {_text('k.expires_at', 'expires_at')},"
            f" k.permissions, k.prefix, {_text('k.used_at', 'used_at')}"
            f" FROM api_key k JOIN organization o ON o.org_id = k.org_id ORDER BY k.created_at, k.key_id"
        )

    def list_organizations(self) -> list[Row]:
        return self._query(
            f"SELECT o.name, {_text('o.created_at', 'created_at')},"
            f" (SELECT count(*) FROM api_key k WHERE k.org_id = o.org_id AND k.revoked_at IS NULL) AS keys,"
            f" (SELECT count(*) FROM pod p WHERE p.org_id = o.org_id) AS pods"
            f" FROM organization o ORDER BY o.created_at, o.name COLLATE \"C\""
        )

    def is_new_organization(self, name: str) -> bool:
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM api_key k JOIN organization o ON o.org_id = k.org_id WHERE o.name = %s)"
            " OR EXISTS (SELECT 1 FROM pod p JOIN organization o ON o.org_id = p.org_id WHERE o.name = %s) AS used",
            (name, name),
        )
        return row is not None and not row["used"]

    def revoke_api_key(self, key_id: str) -> str | None:
        conn = self.connection()
        with conn.transaction():
            conn.execute(
                f"UPDATE api_key SET revoked_at = {NOW} WHERE key_id = %s AND revoked_at IS NULL",
                (self._now(), key_id),
            )
            row = conn.execute(
                f"SELECT {_text('revoked_at')} FROM api_key WHERE key_id = %s", (key_id,)
            ).fetchone()
        return row["revoked_at"] if row else None

    def update_key(self, org_id: int, key_id: str, name: str | None, permissions: str | None,
                   set_permissions: bool, check: Callable[[Row], None] | None = None) -> Row | None:
        conn = self.connection()
        with conn.transaction():
            if check is not None:
                row = conn.execute(DIALECT.find_key + " FOR UPDATE", (key_id, org_id)).fetchone()
                if row is None:
                    return None
                check(row)
            # In SET, columns are the row's values before the update.
            return conn.execute(
                f"UPDATE api_key SET name = coalesce(%(name)s::text, name),"
                f" permissions = CASE WHEN %(set)s THEN %(permissions)s::text ELSE permissions END,"
                f" updated_at = CASE WHEN coalesce(%(name)s::text, name) IS DISTINCT FROM name"
                f" OR (%(set)s AND %(permissions)s::text IS DISTINCT FROM permissions)"
                f" THEN {NOW_NAMED} ELSE updated_at END"
                f" WHERE key_id = %(key_id)s AND org_id = %(org_id)s AND revoked_at IS NULL RETURNING {KEY_COLUMNS}",
                {"name": name, "set": set_permissions, "permissions": permissions, "now": self._now(),
                 "key_id": key_id, "org_id": org_id},
            ).fetchone()

    def delete_key(self, org_id: int, key_id: str) -> bool:
        cur = self.connection().execute(
            f"UPDATE api_key SET revoked_at = {NOW} WHERE key_id = %s AND org_id = %s AND revoked_at IS NULL",
            (self._now(), key_id, org_id),
        )
        return cur.rowcount == 1

    def record_key_use(self, used: dict[str, str]) -> None:
        conn = self.connection()
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE api_key SET used_at = %s::timestamptz"
                    " WHERE key_id = %s AND (used_at IS NULL OR used_at < %s::timestamptz)",
                    [(at, key_id, at) for key_id, at in used.items()],
                )

    # -- pods ---------------------------------------------------------------------

    def insert_pod(self, org_id: int, name: str | None, client_id: str | None) -> Row:
        pod_id = str(uuid.uuid4())
        conn = self.connection()
        # Read committed: when another instance is inserting the same client_id,
        # this insert waits for it to commit, then does nothing, and the select (a
        # new snapshot) sees its pod. Unless that pod was deleted in between: then
        # the insert is tried again.
        for _ in range(3):
            with conn.transaction():
                row = conn.execute(
                    f"INSERT INTO pod (pod_id, org_id, name, client_id, created_at)"
                    f" VALUES (%s, %s, %s, %s, {NOW}) ON CONFLICT (org_id, client_id) DO NOTHING"
                    f" RETURNING {POD_COLUMNS}",
                    (pod_id, org_id, name or client_id or pod_id, client_id, self._now()),
                ).fetchone()
                if row is None:
                    row = conn.execute(
                        f"SELECT {POD_COLUMNS} FROM pod WHERE org_id = %s AND client_id = %s", (org_id, client_id)
                    ).fetchone()
            if row is not None:
                return row
        raise psycopg.errors.SerializationFailure(f"client_id {client_id!r} kept being created and deleted")

    def delete_pod(self, org_id: int, pod_id: str) -> bool:
        if not self._storable(pod_id):
            return False
        conn = self.connection()
        with conn.transaction():
            # The pod's row first: a key being created for it (insert_api_key holds the
            # row FOR KEY SHARE) either commits before, and is deleted here, or waits,
            # then finds no pod.
            if conn.execute(
                "SELECT 1 FROM pod WHERE pod_id = %s AND org_id = %s FOR UPDATE", (pod_id, org_id)
            ).fetchone() is None:
                return False
            conn.execute("DELETE FROM api_key WHERE pod_id = %s AND org_id = %s", (pod_id, org_id))
            conn.execute("DELETE FROM pod WHERE pod_id = %s AND org_id = %s", (pod_id, org_id))
        return True


    # -- what metrics read ------------------------------------------------------------

    def row_counts(self) -> dict[str, int]:
        """Organizations, keys that authenticate (not revoked or deleted) and pods:
        exact where the planner expects fewer than EXACT_COUNT_BELOW rows (a count of
        that many takes milliseconds), else the planner's own estimate, which costs
        no scan: PostgreSQL's count(*) reads every row (or index entry), and on a
        table of millions, from every instance at every scrape, that is load for
        nothing. The estimate scales the last ANALYZE's rows per page by the table's
        current size, so it follows growth between autovacuum runs."""
        conn = self.connection()
        counts = {}
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
            for name, rows in COUNTED_ROWS.items():
                explained = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 {rows}").fetchone()
                assert explained is not None  # EXPLAIN always answers a row
                estimate = int(explained["QUERY PLAN"][0]["Plan"]["Plan Rows"])
                if estimate < EXACT_COUNT_BELOW:
                    counted = conn.execute(f"SELECT count(*) AS n {rows}").fetchone()
                    assert counted is not None  # count(*) always answers a row
                    estimate = counted["n"]
                counts[name] = estimate
        return counts

    def pool_stats(self) -> dict[str, int] | None:
        """The serving pool's figures (psycopg_pool's get_stats()), or None without one."""
        pool = self._pool
        return None if pool is None else pool.get_stats()

    def error_kind(self, error: BaseException) -> str | None:
        """What a database error escaping an operation was: "timeout" (no pool
        connection within POOL_WAIT, a statement past STATEMENT_TIMEOUT, a server
        the watchdog gave up on), "locked" (a lock not granted within the lock
        timeout, a deadlock, a serialization failure), "unavailable" (the server
        unreachable, closing, read-only), "other" (any other database error);
        None for anything else."""
        if isinstance(error, (psycopg_pool.PoolTimeout, psycopg.errors.QueryCanceled)):
            return "timeout"
        if isinstance(error, (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
                              psycopg.errors.SerializationFailure)):
            return "locked"
        if isinstance(error, self.unavailable):
            conn = getattr(self._local, "conn", None)
            cut = conn is not None and self._watchdog is not None and self._watchdog.was_cut(conn)
            return "timeout" if cut else "unavailable"
        return "other" if isinstance(error, psycopg.Error) else None
