"""Every SQL statement the service runs, one function each.

Functions take a connection and return rows or plain values, never cursors.
Writes open their own transaction through ``db.write_tx``; a function that returns
after a write has committed it.
"""

import secrets
import sqlite3
import uuid
from datetime import UTC, datetime

from .db import write_tx

POD_COLUMNS = "pod_id, name, client_id, created_at"


def utc_now() -> str:
    """The current time as fixed-width RFC 3339 UTC with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- settings ---------------------------------------------------------------


def setting(conn: sqlite3.Connection, key: str, make_value) -> bytes:
    """The stored value of ``key``; stores ``make_value()`` first if there is none.

    Safe when several processes start at once: the first insert wins, all read it.
    """
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


def org_for_key_hash(conn: sqlite3.Connection, key_hash: str):
    """The (org_id, org_name, key_id) of an unrevoked key with this hash, or None."""
    return conn.execute(
        "SELECT o.org_id, o.name AS org_name, k.key_id FROM api_key k"
        " JOIN organization o ON o.org_id = k.org_id"
        " WHERE k.key_hash = ? AND k.revoked_at IS NULL",
        (key_hash,),
    ).fetchone()


def insert_api_key(conn: sqlite3.Connection, org_name: str, key_hash: str, before_commit=None) -> str:
    """Store a key for ``org_name`` (creating the organization if needed).

    Idempotent on ``key_hash``: storing the same key again changes nothing, a
    revoked key stays revoked. Returns the key's id. ``before_commit(key_id)``, if
    given, runs inside the transaction: if it raises, nothing is stored.
    """
    now = utc_now()
    with write_tx(conn):
        conn.execute(
            "INSERT INTO organization (name, created_at) VALUES (?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            (org_name, now),
        )
        conn.execute(
            "INSERT INTO api_key (key_id, org_id, key_hash, created_at)"
            " SELECT ?, org_id, ?, ? FROM organization WHERE name = ?"
            " ON CONFLICT (key_hash) DO NOTHING",
            (secrets.token_hex(8), key_hash, now, org_name),
        )
        key_id = conn.execute("SELECT key_id FROM api_key WHERE key_hash = ?", (key_hash,)).fetchone()[0]
        if before_commit is not None:
            before_commit(key_id)
    return key_id


def count_api_keys(conn: sqlite3.Connection) -> int:
    """How many keys exist, revoked ones included."""
    return conn.execute("SELECT count(*) FROM api_key").fetchone()[0]


def list_api_keys(conn: sqlite3.Connection) -> list:
    """Every key as (key_id, org_name, created_at, revoked_at), oldest first."""
    return conn.execute(
        "SELECT k.key_id, o.name AS org_name, k.created_at, k.revoked_at FROM api_key k"
        " JOIN organization o ON o.org_id = k.org_id ORDER BY k.created_at, k.key_id"
    ).fetchall()


def revoke_api_key(conn: sqlite3.Connection, key_id: str):
    """Revoke a key. Returns its revocation time (the earlier one if it was already
    revoked), or None when no key has this id."""
    with write_tx(conn):
        conn.execute(
            "UPDATE api_key SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (utc_now(), key_id),
        )
        row = conn.execute("SELECT revoked_at FROM api_key WHERE key_id = ?", (key_id,)).fetchone()
    return row[0] if row else None


# -- pods ---------------------------------------------------------------------


def insert_pod(conn: sqlite3.Connection, org_id: int, name, client_id):
    """Create a pod, or return the organization's existing pod with this client_id.

    ``name`` defaults to the client_id, else to the new pod_id. Returns the pod row.
    """
    pod_id = str(uuid.uuid4())
    with write_tx(conn):
        # The timestamp is taken under the write lock, so this process's pods get
        # created_at values in commit order.
        row = conn.execute(
            f"INSERT INTO pod (pod_id, org_id, name, client_id, created_at)"
            f" VALUES (?, ?, ?, ?, ?) ON CONFLICT (org_id, client_id) DO NOTHING"
            f" RETURNING {POD_COLUMNS}",
            (pod_id, org_id, name or client_id or pod_id, client_id, utc_now()),
        ).fetchone()
        if row is None:
            row = conn.execute(
                f"SELECT {POD_COLUMNS} FROM pod WHERE org_id = ? AND client_id = ?",
                (org_id, client_id),
            ).fetchone()
    return row


def find_pod(conn: sqlite3.Connection, org_id: int, pod_id: str):
    """The organization's pod with this id, or None."""
    return conn.execute(
        f"SELECT {POD_COLUMNS} FROM pod WHERE pod_id = ? AND org_id = ?", (pod_id, org_id)
    ).fetchone()


def page_pods(conn: sqlite3.Connection, org_id: int, ascending: bool, after, limit: int) -> list:
    """Up to ``limit`` of the organization's pods in (created_at, pod_id) order.

    ``after`` is the (created_at, pod_id) of the last pod already seen, or None to
    start at the beginning; "after" follows the direction.
    """
    op, order = (">", "ASC") if ascending else ("<", "DESC")
    where = "org_id = ?"
    params: list = [org_id]
    if after is not None:
        where += f" AND (created_at, pod_id) {op} (?, ?)"
        params += after
    return conn.execute(
        f"SELECT {POD_COLUMNS} FROM pod WHERE {where}"
        f" ORDER BY created_at {order}, pod_id {order} LIMIT ?",
        (*params, limit),
    ).fetchall()


def delete_pod(conn: sqlite3.Connection, org_id: int, pod_id: str) -> bool:
    """Delete the organization's pod. Returns False when there was none."""
    with write_tx(conn):
        cur = conn.execute("DELETE FROM pod WHERE pod_id = ? AND org_id = ?", (pod_id, org_id))
    return cur.rowcount == 1


def count_pods(conn: sqlite3.Connection) -> int:
    """How many pods exist, in every organization."""
    return conn.execute("SELECT count(*) FROM pod").fetchone()[0]


def ping(conn: sqlite3.Connection) -> None:
    """Read the schema so that an unreadable database raises sqlite3.Error."""
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
