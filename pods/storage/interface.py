"""What every storage backend offers, and the failures they share.

The views, authentication and the CLI speak to a ``Storage`` only; they never see
a database driver, a connection or a statement. Each backend module
(``sqlite.py``, ``postgres.py``) holds every statement it runs.

Rows come back as mappings (``row["pod_id"]``), timestamps as fixed-width RFC 3339
UTC text with microseconds (``2026-11-29T03:39:26.642805Z``), the same on every
backend, so that what is dumped, compared and put in page tokens never depends on
where it was stored.
"""

import secrets
from datetime import UTC, datetime
from typing import Protocol


class UnusableDatabase(Exception):
    """The database is not one this version of pods can use; the message says why."""


class NotPodsDatabase(UnusableDatabase):
    """A database that holds no pods data: empty, or another program's."""


class SchemaTooNew(UnusableDatabase):
    """The database was written by a newer version of pods than this one."""


class NotEmpty(Exception):
    """``copy`` found pods data in its destination; the message says what."""


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


def require_no_rows(found: dict[str, int]) -> None:
    """:raise NotEmpty: a table of ``found`` (rows per table) has rows."""
    if any(found.values()):
        raise NotEmpty(", ".join(f"{n} rows in {table}" for table, n in found.items() if n))


class CopyMismatch(Exception):
    """What ``copy`` wrote is not what it read."""


def counted(rows, counts: dict, table: str):
    """``rows``, counting them into ``counts[table]`` as they pass."""
    for row in rows:
        counts[table] += 1
        yield row


def verified(written: dict, found: dict) -> dict:
    """``found`` (rows per table after a copy), once it matches ``written``.

    :raise CopyMismatch: it does not.
    """
    if written != found:
        raise CopyMismatch(f"wrote {written} but found {found}")
    return found


def new_key_id() -> str:
    """A new API key's id: 16 hex characters (64 random bits)."""
    return secrets.token_hex(8)


def utc_text(moment: datetime) -> str:
    """``moment`` as stored and shown: fixed-width RFC 3339 UTC with microseconds,
    so that text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return utc_text(datetime.now(UTC))


def utc_text_of(seconds: float) -> str:
    """``utc_text`` of a ``time.time()`` value."""
    return utc_text(datetime.fromtimestamp(seconds, UTC))


def path_pod(row) -> dict | None:
    """The pod that ``caller_for_key_hash`` read along with the key (its ``path_pod_*``
    columns), or None: no such pod in the key's organization."""
    if row["path_pod_id"] is None:
        return None
    return {"pod_id": row["path_pod_id"], "name": row["path_pod_name"], "client_id": row["path_pod_client_id"],
            "created_at": row["path_pod_created_at"]}


class Storage(Protocol):
    """One database, as the server and the CLI use it. Methods that write commit
    before they return; methods are safe to call from any thread."""

    # Exceptions (of the driver) that mean "the database is not answering now":
    # the request changed nothing and may be retried; the server answers 503.
    unavailable: tuple[type[BaseException], ...]

    def end_request(self) -> None:
        """After each request: roll back anything left open, release what it held."""

    def end_thread(self) -> None:
        """This thread is done with the database: release what it holds."""

    def close(self) -> None:
        """Release this process's hold on the database (at shutdown)."""

    def ping(self) -> None:
        """Raise one of ``unavailable`` unless the database answers."""

    def setting(self, key: str, make_value) -> bytes:
        """The stored value of ``key``; stores ``make_value()`` first if there is
        none (the first of several processes starting at once wins)."""

    # -- keys -----------------------------------------------------------------------

    def caller_for_key_hash(self, key_hash: str, pod_id: str | None = None):
        """The key (with its organization) that authenticates a request, or None.
        With ``pod_id`` (the pod a request's path names), the same statement also
        reads that pod of the key's organization (``path_pod``), so that a request
        on one pod costs one round trip to the database, not two."""

    def insert_api_key(self, org_name: str, key_hash: str, before_commit=None) -> str:
        """Store a key for ``org_name`` (made if new); idempotent on ``key_hash``."""

    def count_api_keys(self) -> int: ...

    def list_api_keys(self) -> list:
        """Every key (for the operator), revoked ones included, oldest first: key_id,
        org_name, created_at, revoked_at, name, pod_id, expires_at, permissions (as
        stored), prefix, used_at."""

    def list_organizations(self) -> list:
        """Every organization, oldest first: name, created_at, keys (not revoked), pods."""

    def is_new_organization(self, name: str) -> bool:
        """Whether ``name`` has no key (revoked ones included) and no pod, or does not exist."""

    def revoke_api_key(self, key_id: str): ...

    # -- pods -----------------------------------------------------------------------

    def insert_pod(self, org_id: int, name, client_id): ...

    def find_pod(self, org_id: int, pod_id: str): ...

    def page_pods(self, org_id: int, ascending: bool, after, limit: int) -> list: ...

    def delete_pod(self, org_id: int, pod_id: str) -> bool: ...

    def count_pods(self) -> int: ...

    # -- what metrics read (pods/serving/metrics.py) ----------------------------------

    def row_counts(self) -> dict[str, int]:
        """{"organizations", "api_keys" (those not revoked or deleted), "pods"}:
        exact, or estimated where counting would scan a large table."""

    def pool_stats(self) -> dict[str, int] | None:
        """The connection pool's figures (psycopg_pool's get_stats()), or None."""

    def error_kind(self, error: BaseException) -> str | None:
        """"locked", "unavailable", "timeout" or "other" for a database error (see
        ``observed.ERROR_KINDS``); None for an exception that is not one."""
