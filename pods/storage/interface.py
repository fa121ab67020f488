"""What every storage backend offers, and the failures they share: the contract
between pods and its databases.

Two protocols. ``Storage`` is what serving a request may do (authenticate a key,
read and write pods and keys, answer a health check). ``OperatorStorage`` adds what
only the CLI and start-up do to the database as a whole: create it, bring its
schema up to date, check, back up, copy, count. The views and authentication see a
``Storage``; the CLI an ``OperatorStorage``. Neither sees a database driver, a
connection or a statement: each backend module (``sqlite.py``, ``postgres.py``)
holds every statement it runs, and ``common.py`` the few that are the same on both.

Rows come back as mappings (``row["pod_id"]``), timestamps as fixed-width RFC 3339
UTC text with microseconds (``2026-11-29T03:39:26.642805Z``), the same on every
backend, so that what is dumped, compared and put in page tokens never depends on
where it was stored.

Every method may also raise one of the storage's ``unavailable`` exceptions: the
database is not answering now (locked past the wait, disk full, server gone); what
the call would have written is not written.
"""

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, overload


class UnusableDatabase(Exception):
    """The database is not one this version of pods can use; the message says why."""


class NotPodsDatabase(UnusableDatabase):
    """A database that holds no pods data: empty, or another program's."""


class SchemaTooNew(UnusableDatabase):
    """The database was written by a newer version of pods than this one."""


class NotEmpty(Exception):
    """``copy`` found pods data in its destination; the message says what."""


class CopyMismatch(Exception):
    """What ``copy`` wrote is not what it read."""


class Row(Protocol):
    """A row: its columns by name (``row["pod_id"]``); ``dict(row)`` and ``{**row}`` work."""

    def __getitem__(self, column: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


# A clock: the current time as storage writes it (``utc_text``).
Clock = Callable[[], str]
# (created_at, id) of the last row a page already returned.
After = tuple[str, str]
# ``rows(table)``: a table's rows as tuples of its COPY_COLUMNS (``common.py``), times as text.
RowsOf = Callable[[str], Iterable[tuple[Any, ...]]]


def utc_text(moment: datetime) -> str:
    """``moment`` as stored and shown: fixed-width RFC 3339 UTC with microseconds,
    so that text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_second: tuple[int | None, str] = (None, "")  # (a whole second since the epoch, its text to the second)


def utc_now() -> str:
    """This machine's clock, as ``utc_text``. Read on every request (a key's expiry
    is checked against it): strftime once a second, not once a call (13 -> 2.5 us)."""
    global _second
    whole, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    second, text = _second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{nanoseconds // 1000:06d}Z"


def utc_text_of(seconds: float) -> str:
    """``utc_text`` of a ``time.time()`` value."""
    return utc_text(datetime.fromtimestamp(seconds, UTC))


def path_pod(row: Row) -> dict[str, Any] | None:
    """The pod that ``caller_for_key_hash`` read along with the key (its ``path_pod_*``
    columns), or None: no such pod in the key's organization."""
    if row["path_pod_id"] is None:
        return None
    return {"pod_id": row["path_pod_id"], "name": row["path_pod_name"], "client_id": row["path_pod_client_id"],
            "created_at": row["path_pod_created_at"]}


class Storage(Protocol):
    """One database, as serving a request uses it.

    Methods that write commit before they return (a return means durable), and
    either do all they say or nothing. Methods are safe to call from any thread;
    each thread holds what it uses (a connection) until ``end_request`` or
    ``end_thread``. With several processes on one database (workers, instances on
    one PostgreSQL), every guarantee below holds across them.
    """

    # Exceptions (of the driver) that mean "the database is not answering now":
    # the request changed nothing and may be retried; the server answers 503.
    unavailable: tuple[type[BaseException], ...]
    # Set when a request found the database unavailable: ``ping`` then also checks
    # that it takes writes again before it reports the database healthy.
    write_failed: bool
    # The time "now" for this storage's writes and expiry checks, as ``utc_text``.
    # None (always, in production): the backend's own clock, which on PostgreSQL is
    # the database server's, so that order does not depend on which instance wrote.
    # Tests set one to make times (and so the order of pods) what they choose.
    clock: Clock | None
    # The database as messages show it: a path, or a URL without its password.
    description: str

    def end_request(self) -> None:
        """After each request: roll back anything it left open and release the
        locks it held; the thread may keep its connection for its next request."""

    def end_thread(self) -> None:
        """This thread is done with the database: release all it holds (its
        connection goes back to the pool, or is closed)."""

    def close(self) -> None:
        """Release this process's hold on the database (at shutdown)."""

    def ping(self) -> None:
        """Return only when the database answers and can be read now; after a
        request found it unavailable (``write_failed``), also when it takes writes
        again (a write it undoes), and then clear ``write_failed``.

        :raise: one of ``unavailable``, when it does not.
        """

    def setting(self, key: str, make_value: Callable[[], bytes]) -> bytes:
        """The stored value of ``key``; stores ``make_value()`` first if there is
        none. Of several processes starting at once, the first to store wins, and
        all of them return its value."""

    # -- keys -----------------------------------------------------------------------

    def caller_for_key_hash(self, key_hash: str, pod_id: str | None = None) -> Row | None:
        """The key with this hash, if it may authenticate a request now (not
        revoked or deleted, not expired by ``clock``), else None. The row holds
        org_id, org_name, key_id, pod_id (its scope), permissions, expires_at and
        used_at. With ``pod_id`` (the pod a request's path names), the same
        statement also reads that pod of the key's organization, if any
        (``path_pod``): a request on one pod costs one round trip, not two."""

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
        """Store a key for ``org_name`` (the organization is made if new), scoped
        to ``pod_id`` if given, named ``name`` (default: ``prefix``), with the
        stored ``permissions`` (JSON text; None: every one) and ``expires_at``
        (None: never). Returns the key's row (as ``find_key``).

        Idempotent on ``key_hash``: storing the same key again returns the stored
        one unchanged (a revoked key stays revoked), except that a key stored
        before prefixes were kept gets its ``prefix`` now. ``before_commit(row)``,
        if given, runs inside the transaction: if it raises, nothing is stored.
        ``only_if_first``: store it only if no key exists at all (a new database's
        first key), else return None; decided in the same transaction, so that of
        several servers starting at once on a new database, exactly one makes a key.

        :raise LookupError: ``pod_id`` names no pod of the organization.
        """

    def find_key(self, org_id: int, key_id: str) -> Row | None:
        """The organization's key with this id, unless revoked or deleted (expired
        keys are found), or None. Its row: key_id, prefix, name, pod_id,
        permissions, created_at, updated_at, expires_at, used_at."""

    def page_keys(self, org_id: int, pod_id: str | None, ascending: bool, after: After | None,
                  limit: int) -> list[Row]:
        """Up to ``limit`` of the organization's keys (only those scoped to
        ``pod_id``, if given) in (created_at, key_id) order, after ``after``, as
        ``page_pods`` pages pods. Revoked and deleted keys are left out; expired
        ones are not. Rows as ``find_key``'s. Read from indexes of live keys only:
        what the organization deleted costs a page nothing."""

    def key_page_query(self, org_id: int, pod_id: str | None, ascending: bool, after: After | None,
                       limit: int) -> tuple[str, tuple[Any, ...]]:
        """The statement and parameters ``page_keys`` runs (its tests read its plan)."""

    def live_key_owners(self, limit: int) -> list[tuple[str, int, str, str]]:
        """Up to ``limit`` live keys (not revoked or deleted, not expired), newest
        first, each as (key_hash, org_id, org_name, key_id): whose each token is, for
        a server to schedule and rate-limit requests by before it has seen them."""

    def live_key_owners_since(self, mark: Any) -> tuple[list[tuple[str, int, str, str]], Any]:
        """The live keys created since ``mark``, as ``live_key_owners``'s tuples, and
        the mark to pass next time. ``mark`` is what the last call returned, or None
        for the first (which returns no keys, only a mark): how a server learns of
        keys made by another process or instance, polling, with one cheap read."""

    def update_key(self, org_id: int, key_id: str, name: str | None, permissions: str | None,
                   set_permissions: bool, check: Callable[[Row], None] | None = None) -> Row | None:
        """Rename a key (unless ``name`` is None) and, with ``set_permissions``,
        replace its stored ``permissions``; ``updated_at`` moves only if something
        changed. Returns the key after the change, or None when the organization
        has no such key (revoked or deleted included).

        ``check(row)``, given the key as it is now, with no other writer in between
        until the change is committed, may raise to refuse the change, which is
        then not made (the exception propagates).
        """

    def delete_key(self, org_id: int, key_id: str) -> bool:
        """Delete a key: every process refuses it from the next request on, and the
        API sees it no more (the operator still sees it, revoked, in
        ``list_api_keys``). Returns False when the organization has no such key."""

    def record_key_use(self, used: dict[str, str]) -> None:
        """Note when keys were used: {key_id: time}, in one transaction. Never moves
        a key's ``used_at`` backwards; ids of keys that are gone are ignored."""

    # -- pods -----------------------------------------------------------------------

    def insert_pod(self, org_id: int, name: str | None, client_id: str | None) -> Row:
        """Create a pod, or return the organization's existing pod with this
        ``client_id`` unchanged. A new pod's ``name`` defaults to the ``client_id``,
        else to its new ``pod_id``; its ``created_at`` is ``clock``'s time.

        Concurrent calls with one ``client_id`` (in any process) create exactly one
        pod, and all of them return it. Returns the pod's row: pod_id, name,
        client_id, created_at.
        """

    def find_pod(self, org_id: int, pod_id: str) -> Row | None:
        """The organization's pod with this id, or None (whatever the id's shape:
        any text is a valid question)."""

    def page_pods(self, org_id: int, ascending: bool, after: After | None, limit: int,
                  pod_id: str | None = None) -> list[Row]:
        """Up to ``limit`` of the organization's pods (only ``pod_id``, if given)
        in (created_at, pod_id) order, descending unless ``ascending``; ids compare
        as bytes, whatever the database's collation.

        ``after`` is the (created_at, pod_id) of the last pod already seen, or None
        to start at the beginning; "after" follows the direction. Keyset paging: a
        page costs the same however many pods come before it, and a walk sees every
        pod that exists throughout it exactly once, whatever is created or deleted
        meanwhile.
        """

    def delete_pod(self, org_id: int, pod_id: str) -> bool:
        """Delete the organization's pod and the keys scoped to it, in one
        transaction (a key being created for it at that moment is either deleted
        with it or not created). Returns False when there was no such pod."""


class OperatorStorage(Storage, Protocol):
    """One database, as the CLI and start-up use it: besides what requests do, the
    work on the database as a whole. None of these is called while serving a
    request. Only ``prepare``, ``migrate``, ``create`` and ``import_all`` change
    the schema or create a database; the others change nothing but what they say.
    """

    # The schema version this pods writes and reads.
    target_version: int

    # -- the database as a whole --------------------------------------------------------

    def exists(self) -> bool:
        """Whether the database is there (a SQLite file; a PostgreSQL database its
        operator created), without creating it.

        :raise: one of ``unavailable``: it cannot be told (a server not answering).
        """

    def schema_version(self, empty_ok: bool = False) -> int:
        """The schema version of the pods database here, read without changing
        anything, and checked: a known version with every table and column it
        needs. With ``empty_ok``, an empty database (no tables) is version 0.

        :raise NotPodsDatabase: the database holds something else, or nothing.
        :raise SchemaTooNew: a newer pods wrote it.
        """

    def prepare(self) -> None:
        """Serving's start, and ``copy``'s destination: create the database if the
        backend can (a SQLite file, owner-only) and bring it to ``target_version``,
        the whole schema into an empty one. Several processes starting at once
        apply each step once; a step that fails changes nothing.

        :raise NotPodsDatabase: it holds another program's data.
        :raise SchemaTooNew: a newer pods wrote it.
        :raise UnusableDatabase: pods cannot use it (a PostgreSQL database not in UTF8).
        """

    def migrate(self) -> None:
        """Bring an existing database to ``target_version`` (``migrate``), one logged
        step at a time, each in its own transaction; raises as ``prepare``."""

    def create(self) -> None:
        """``init``: a new database at ``target_version`` (a new SQLite file,
        owner-only; the tables in an empty PostgreSQL database).

        :raise FileExistsError: there is a database there already.
        """

    def discard_new(self) -> None:
        """Undo ``create`` or ``prepare`` of a new database (only right after it,
        when the command could not finish): nothing of anyone's is lost."""

    def problems(self) -> list[str]:
        """``check``: what is wrong with the database beyond its schema (SQLite:
        its integrity and foreign-key checks), one line each; empty when sound.
        Changes nothing.

        :raise NotPodsDatabase, SchemaTooNew: as ``schema_version``.
        """

    def checkpoint(self) -> None:
        """At shutdown, once no request runs: leave the database in as few files as
        it can (SQLite folds its write-ahead log back, never waiting on a reader);
        nothing to do where the server owns its log."""

    def backup(self, dest: str) -> None:
        """``backup``: write a consistent copy of the database to the file ``dest``
        (replacing it), safely while others write. The copy is written beside it
        first (``dest.partial``), checked, then renamed into place.

        :raise FileExistsError: ``dest.partial`` exists (an interrupted backup's).
        :raise OSError: it cannot be written.
        :raise NotImplementedError: the backend has no file to copy (PostgreSQL:
            ``copy`` to a SQLite file, or PostgreSQL's own tools).
        """

    def is_same_database_as(self, other: "OperatorStorage") -> bool:
        """Whether ``other`` is this very database, however differently it is
        named (a host and its address, a path and a symlink to it)."""

    # -- counts and keys, for the operator ----------------------------------------------

    def count_pods(self) -> int:
        """How many pods exist, in every organization."""

    def count_api_keys(self) -> int:
        """How many keys exist, revoked and deleted ones included."""

    def list_api_keys(self) -> list[Row]:
        """Every key of every organization, revoked and deleted ones included,
        oldest first: key_id, org_name, created_at, revoked_at, name, pod_id,
        expires_at, permissions (as stored: None for every one), prefix, used_at."""

    def list_organizations(self) -> list[Row]:
        """Every organization, oldest first: name, created_at, keys (those not
        revoked: the ones the API lists, expired ones included), pods."""

    def is_new_organization(self, name: str) -> bool:
        """Whether the organization ``name`` has no key (revoked ones count) and no
        pod, or does not exist: a key made for it starts a new organization."""

    def revoke_api_key(self, key_id: str) -> str | None:
        """Revoke a key (refused from the next request on, at every process).
        Returns its revocation time (the earlier one if it was already revoked), or
        None when no key has this id."""

    # -- copy ---------------------------------------------------------------------------

    def snapshot(self) -> AbstractContextManager[RowsOf]:
        """``copy``'s source: one consistent read of the whole database (writers
        may go on meanwhile), as a context that yields ``rows(table)``."""

    def require_empty(self) -> None:
        """``copy``'s destination, before ``prepare`` (which would migrate an older
        schema): whether the database holds pods data, read only.

        :raise NotEmpty: it does; the message says which tables hold rows.
        """

    def import_all(self, rows_of: RowsOf) -> dict[str, int]:
        """Write every table's rows (``rows_of(table)``, as ``snapshot`` gives them)
        into this database, which holds no pods data, in one transaction, with no
        other writer meanwhile. Returns how many rows each table holds afterwards,
        checked against how many were written.

        :raise NotEmpty: it holds pods data; nothing is written.
        :raise CopyMismatch: the counts differ; nothing is written.
        """


    # -- what metrics read (pods/serving/metrics.py) ----------------------------------

    def row_counts(self) -> dict[str, int]:
        """{"organizations", "api_keys" (those not revoked or deleted), "pods"}:
        exact, or estimated where counting would scan a large table."""

    def pool_stats(self) -> dict[str, int] | None:
        """The connection pool's figures (psycopg_pool's get_stats()), or None."""

    def error_kind(self, error: BaseException) -> str | None:
        """"locked", "unavailable", "timeout" or "other" for a database error (see
        ``observed.ERROR_KINDS``); None for an exception that is not one."""
