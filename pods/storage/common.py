"""What the two backends do alike, written once: keyset paging, finding a pod or a
key by id, counting rows, the emptiness check and bookkeeping of ``copy``.

These statements are the same on SQLite and PostgreSQL but for how a parameter is
written and how a row's times are read back: each backend describes that in a
``Dialect``, and supplies how it runs a statement (``_query``, ``_one``), which
tables a database has (``_tables``), and how it stores a key
(``_insert_api_key``). Every other statement lives in its backend's module.
"""

import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal, Protocol, TypeVar, overload

from .interface import After, Clock, CopyMismatch, NotEmpty, OperatorStorage, Row

# What ``copy`` moves, table by table in an order that keeps every reference valid;
# times travel as text, the same on every backend.
COPY_COLUMNS = {
    "organization": ("org_id", "name", "created_at"),
    "pod": ("pod_id", "org_id", "name", "client_id", "created_at"),
    "api_key": ("key_id", "org_id", "pod_id", "key_hash", "prefix", "name", "permissions",
                "created_at", "updated_at", "expires_at", "used_at", "revoked_at"),
    "setting": ("key", "value"),
}
TIME_COLUMNS = {"created_at", "updated_at", "expires_at", "used_at", "revoked_at"}

T = TypeVar("T")


def require_no_rows(found: dict[str, int]) -> None:
    """:raise NotEmpty: a table of ``found`` (rows per table) has rows."""
    if any(found.values()):
        raise NotEmpty(", ".join(f"{n} rows in {table}" for table, n in found.items() if n))


def counted(rows: Iterable[T], counts: dict[str, int], table: str) -> Iterator[T]:
    """``rows``, counting them into ``counts[table]`` as they pass."""
    for row in rows:
        counts[table] += 1
        yield row


def verified(written: dict[str, int], found: dict[str, int]) -> dict[str, int]:
    """``found`` (rows per table after a copy), once it matches ``written``.

    :raise CopyMismatch: it does not.
    """
    if written != found:
        raise CopyMismatch(f"wrote {written} but found {found}")
    return found


def new_key_id() -> str:
    """A new API key's id: 16 hex characters (64 random bits)."""
    return secrets.token_hex(8)


def only_row(row: T | None) -> T:
    """The row of a statement that always returns one (``count(*)``, say).

    :raise LookupError: it returned none after all.
    """
    if row is None:
        raise LookupError("the statement returned no row")
    return row


class Cursor(Protocol):
    def fetchone(self) -> Any: ...


class Connection(Protocol):
    """What the shared code needs of a driver's connection (sqlite3's and psycopg's alike)."""

    def execute(self, statement: str, /) -> Cursor: ...


class Dialect:
    """How a backend writes the statements that are otherwise the same on both."""

    def __init__(self, param: str, time_param: str, now: str, pod_columns: str, key_columns: str):
        """``param``: a statement's parameter (``?``, ``%s``); ``time_param``: one
        holding a time as ``utc_text``; ``now``: the time now, from one parameter (the
        storage's ``_now()``); ``pod_columns``, ``key_columns``: a pod's and a key's
        columns as rows return them (times as ``utc_text``)."""
        self.param, self.time_param = param, time_param
        self.pod_columns, self.key_columns = pod_columns, key_columns
        p = param
        self.find_pod = f"SELECT {pod_columns} FROM pod WHERE pod_id = {p} AND org_id = {p}"
        self.find_key = f"SELECT {key_columns} FROM api_key WHERE key_id = {p} AND org_id = {p} AND revoked_at IS NULL"
        live_key_owners = ("SELECT k.key_hash, k.org_id, o.name AS org_name, k.key_id FROM api_key k"
                           " JOIN organization o ON o.org_id = k.org_id"
                           f" WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > {now})")
        # Parameters: now, then the limit; now, then the time to read from.
        self.newest_key_owners = f"{live_key_owners} ORDER BY k.created_at DESC LIMIT {p}"
        self.key_owners_from = f"{live_key_owners} AND k.created_at >= {time_param} ORDER BY k.created_at"

    def page(self, table: str, columns: str, id_column: str, where: str, ascending: bool, after: bool) -> str:
        """Keyset paging: a statement for up to ``limit`` rows of ``table`` matching
        ``where``, in (created_at, id) order (descending unless ``ascending``); with
        ``after``, only those after a (created_at, id). Its parameters: those of
        ``where``, then the (created_at, id) if ``after``, then the limit. Served by
        the table's (org_id, created_at, id) index, whatever the page's depth (for
        keys: its index of live keys, whatever was deleted)."""
        op, order = (">", "ASC") if ascending else ("<", "DESC")
        if after:
            where += f" AND (created_at, {id_column}) {op} ({self.time_param}, {self.param})"
        # Ordered by the table's columns, named with the table: on PostgreSQL a bare
        # created_at names the output column of that name (the time as text), which no
        # index gives in order, so every matching row would be read and sorted.
        return (f"SELECT {columns} FROM {table} WHERE {where}"
                f" ORDER BY {table}.created_at {order}, {table}.{id_column} {order} LIMIT {self.param}")


class SQLStorage(OperatorStorage):
    """The part of a backend that is the same on both: see the module's docstring.
    Methods without a docstring of their own have the interface's."""

    dialect: ClassVar[Dialect]

    def __init__(self, description: str):
        self.description = description
        self.write_failed = False
        self.clock: Clock | None = None

    # -- what the backend supplies ------------------------------------------------------

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a statement that changes nothing."""
        raise NotImplementedError

    def _one(self, statement: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a statement that changes nothing, or None."""
        raise NotImplementedError

    def _now(self) -> str | None:
        """The parameter of the dialect's ``now``."""
        raise NotImplementedError

    def connection(self) -> Any:
        """This thread's connection."""
        raise NotImplementedError

    def _tables(self, conn: Any) -> set[str]:
        """The tables of the database ``conn`` is open on (pods' own and any other)."""
        raise NotImplementedError

    def _insert_api_key(self, org_name: str, key_hash: str, prefix: str, name: str | None, pod_id: str | None,
                        permissions: str | None, expires_at: str | None,
                        before_commit: Callable[[Row], None] | None, only_if_first: bool) -> Row | None:
        """``insert_api_key``."""
        raise NotImplementedError

    def _storable(self, *ids: str) -> bool:
        """Whether ids from a request (a path) could be in the database at all."""
        return True

    def _clock_now(self) -> str | None:
        """``clock``'s time, or None: the backend's own clock."""
        return None if self.clock is None else self.clock()

    # -- keys ---------------------------------------------------------------------------

    @overload
    def insert_api_key(self, org_name: str, key_hash: str, prefix: str, name: str | None = None,
                       pod_id: str | None = None, permissions: str | None = None, expires_at: str | None = None,
                       before_commit: Callable[[Row], None] | None = None,
                       only_if_first: Literal[False] = False) -> Row: ...

    @overload
    def insert_api_key(self, org_name: str, key_hash: str, prefix: str, name: str | None = None,
                       pod_id: str | None = None, permissions: str | None = None, expires_at: str | None = None,
                       before_commit: Callable[[Row], None] | None = None,
                       *, only_if_first: bool) -> Row | None: ...

    def insert_api_key(self, org_name: str, key_hash: str, prefix: str, name: str | None = None,
                       pod_id: str | None = None, permissions: str | None = None, expires_at: str | None = None,
                       before_commit: Callable[[Row], None] | None = None,
                       only_if_first: bool = False) -> Row | None:
        row = self._insert_api_key(org_name, key_hash, prefix, name, pod_id, permissions, expires_at,
                                   before_commit, only_if_first)
        return row if only_if_first else only_row(row)

    def find_key(self, org_id: int, key_id: str) -> Row | None:
        if not self._storable(key_id):
            return None
        return self._one(self.dialect.find_key, (key_id, org_id))

    def page_keys(self, org_id: int, pod_id: str | None, ascending: bool, after: After | None,
                  limit: int) -> list[Row]:
        return self._query(*self.key_page_query(org_id, pod_id, ascending, after, limit))

    def key_page_query(self, org_id: int, pod_id: str | None, ascending: bool, after: After | None,
                       limit: int) -> tuple[str, tuple[Any, ...]]:
        p = self.dialect.param
        where = f"org_id = {p} AND revoked_at IS NULL"  # the live-key indexes' own condition
        params: list[Any] = [org_id]
        if pod_id is not None:
            where, params = where + f" AND pod_id = {p}", params + [pod_id]
        statement = self.dialect.page("api_key", self.dialect.key_columns, "key_id", where, ascending,
                                      after is not None)
        return statement, (*params, *(after or ()), limit)

    def count_api_keys(self) -> int:
        return self._count(self.connection(), "api_key")

    # -- pods ---------------------------------------------------------------------------

    def live_key_owners(self, limit: int) -> list[tuple[str, int, str, str]]:
        return _owners(self._query(self.dialect.newest_key_owners, (self._now(), limit)))

    def live_key_owners_since(self, mark: Any) -> tuple[list[tuple[str, int, str, str]], Any]:
        # The next mark is a time read while no key is being written, so every key
        # committed after this look has a later created_at; while one is, the mark
        # stays (and the same keys are read again). Read through api_key_live_created.
        next_mark = self._time_no_key_is_written()
        if next_mark is None:
            next_mark = mark
        if mark is None:
            return [], next_mark
        return _owners(self._query(self.dialect.key_owners_from, (self._now(), mark))), next_mark

    def _time_no_key_is_written(self) -> Any:
        """The time now, read while no key's write is under way (not waiting for
        one): every key committed later has a later ``created_at``. None while one is."""
        raise NotImplementedError

    def find_pod(self, org_id: int, pod_id: str) -> Row | None:
        if not self._storable(pod_id):
            return None
        return self._one(self.dialect.find_pod, (pod_id, org_id))

    def page_pods(self, org_id: int, ascending: bool, after: After | None, limit: int,
                  pod_id: str | None = None) -> list[Row]:
        p = self.dialect.param
        where = f"org_id = {p}"
        params: list[Any] = [org_id]
        if pod_id is not None:
            where, params = where + f" AND pod_id = {p}", params + [pod_id]
        return self._page("pod", self.dialect.pod_columns, "pod_id", where, params, ascending, after, limit)

    def _page(self, table: str, columns: str, id_column: str, where: str, params: Sequence[Any], ascending: bool,
              after: After | None, limit: int) -> list[Row]:
        statement = self.dialect.page(table, columns, id_column, where, ascending, after is not None)
        return self._query(statement, (*params, *(after or ()), limit))

    def count_pods(self) -> int:
        return self._count(self.connection(), "pod")

    # -- copy ---------------------------------------------------------------------------

    def require_empty(self) -> None:
        require_no_rows(self._row_counts(self.connection()))

    def _row_counts(self, conn: Connection) -> dict[str, int]:
        """Rows in each table ``copy`` moves that the database has."""
        tables = self._tables(conn)
        return {table: self._count(conn, table) for table in COPY_COLUMNS if table in tables}

    @staticmethod
    def _count(conn: Connection, table: str) -> int:
        return only_row(conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone())["n"]


def _owners(rows: Iterable[Row]) -> list[tuple[str, int, str, str]]:
    return [(row["key_hash"], row["org_id"], row["org_name"], row["key_id"]) for row in rows]
