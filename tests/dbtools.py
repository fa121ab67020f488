"""Test databases on both backends, and reading them directly (to check what a
server stored, never through the server itself).

PostgreSQL is found at PODS_TEST_POSTGRES (default: the local server, user
postgres). Each test run gets a database of its own, dropped at the end, and each
test a schema of its own in it (the URL's search_path), as cheap as SQLite's
temporary file.
"""

import os
import secrets
import sqlite3
from datetime import datetime
from urllib.parse import quote, urlsplit, urlunsplit

from pods.storage import is_url, utc_text

ADMIN_URL = os.environ.get("PODS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name`` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections create and find their tables in ``schema``."""
    parts = urlsplit(url)
    option = "options=" + quote(f"-c search_path={schema}")
    return urlunsplit(parts._replace(query=f"{parts.query}&{option}" if parts.query else option))


def new_schema(run_url: str) -> str:
    """A URL for a new, empty schema in the run's database."""
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(run_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return with_schema(run_url, schema)


# PostgreSQL: the connections of the last few URLs used, kept (a new one costs milliseconds;
# tests use one or two databases at a time, and the server allows only so many clients).
_connections: dict = {}
KEPT = 4


def query(target: str, statement: str, params=()) -> list[tuple]:
    """Rows of ``statement`` (with ``?`` placeholders) on the database ``target``,
    each a tuple, times as the API shows them, bytes as bytes."""
    if is_url(target):
        import psycopg

        conn = _connections.pop(target, None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(target, autocommit=True)
        _connections[target] = conn  # now the most recent
        while len(_connections) > KEPT:
            _connections.pop(next(iter(_connections))).close()
        cursor = conn.execute(statement.replace("?", "%s"), params)
        rows = cursor.fetchall() if cursor.description is not None else []
        return [tuple(_plain(value) for value in row) for row in rows]
    conn = sqlite3.connect(target)
    try:
        return [tuple(row) for row in conn.execute(statement, params)]
    finally:
        conn.close()


def close_connections() -> None:
    for conn in _connections.values():
        conn.close()
    _connections.clear()


def _plain(value):
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value
