"""Deleted keys leave nothing to walk: a page of an organization's (or a pod's)
keys is read from an index of live keys only, on both backends, so it costs the
same whether the organization deleted ten keys or a million. Shown by each
backend's query plan and by the work the page takes, never by a timing."""

import sqlite3

import dbtools
import pytest
from helpers import storage_of

from pods.api.auth import hash_key, new_token
from pods.storage import is_url

DELETED = 20_000


def live_keys(app):
    """acme with a pod P, three live organization keys and two of P."""
    storage = storage_of(app)
    for _ in range(3):
        storage.insert_api_key("acme", hash_key(new_token()), "pods_x")
    org_id = dbtools.query(app.config["DB"], "SELECT org_id FROM organization WHERE name = 'acme'")[0][0]
    pod = storage.insert_pod(org_id, "P", None)["pod_id"]
    for _ in range(2):
        storage.insert_api_key("acme", hash_key(new_token()), "pods_x", pod_id=pod)
    storage.end_thread()
    return org_id, pod


def pile_up(app, org_id, pod, deleted: int):
    """``deleted`` deleted keys of acme and of P, written in bulk (as 200
    create-delete pairs a second would, over an afternoon)."""
    target = app.config["DB"]
    # Half made before the live keys and half after: a page meets them first whichever
    # way it goes.
    values = [(f"d{i:015x}", org_id, pod if i % 2 else None, f"h{i}", "pods_x", "gone", made, made, made)
              for i in range(deleted)
              for made in [f"{2000 if i % 4 < 2 else 2099}-01-01T00:00:00.{i:06d}Z"]]
    insert = ("INSERT INTO api_key (key_id, org_id, pod_id, key_hash, prefix, name, created_at, updated_at, revoked_at)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    if is_url(target):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.executemany(insert.replace("?", "%s"), values)
            conn.execute("ANALYZE api_key")
    else:
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("BEGIN")
        conn.executemany(insert, values)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()


def sqlite_plan(target, statement, params) -> str:
    conn = sqlite3.connect(target)
    try:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, params))
    finally:
        conn.close()


def sqlite_steps(target, statement, params) -> int:
    """How many virtual-machine instructions SQLite runs for the statement: the work
    it does, whatever the machine's load."""
    conn = sqlite3.connect(target)
    steps = 0

    def count():
        nonlocal steps
        steps += 1

    try:
        conn.execute(statement, params).fetchall()  # the schema and statistics read, the statement prepared
        conn.set_progress_handler(count, 1)
        rows = conn.execute(statement, params).fetchall()
    finally:
        conn.close()
    return steps, len(rows)


def postgres_plan(target, statement, params) -> str:
    rows = dbtools.query(target, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " + statement.replace("%s", "?"),
                         params)
    return "\n".join(row[0] for row in rows)


def postgres_buffers(plan: str) -> int:
    """Pages the statement touched (its first Buffers line: the whole plan's)."""
    line = next(line for line in plan.splitlines() if "Buffers:" in line)
    return sum(int(word.split("=")[1]) for word in line.split() if "=" in word)


def work(app, backend, statement, params) -> tuple[int, int]:
    """(the work a page takes, rows found): SQLite's virtual-machine instructions,
    PostgreSQL's buffers touched; whatever the machine's load."""
    if backend == "sqlite":
        return sqlite_steps(app.config["DB"], statement, params)
    plan = postgres_plan(app.config["DB"], statement, params)
    return postgres_buffers(plan), int(plan.splitlines()[0].split("rows=")[1].split()[0])


@pytest.mark.parametrize("scope", ["organization", "pod"])
def test_a_key_page_reads_live_keys_only_whatever_was_deleted(app, backend, scope):
    storage = storage_of(app)
    org_id, pod = live_keys(app)
    pod_id = pod if scope == "pod" else None
    index = "api_key_pod_live_page" if scope == "pod" else "api_key_org_live_page"
    live = 2 if scope == "pod" else 5
    whole = {ascending: storage.key_page_query(org_id, pod_id, ascending, None, 100) for ascending in (False, True)}
    before = {ascending: work(app, backend, *query) for ascending, query in whole.items()}
    pile_up(app, org_id, pod, DELETED)
    for ascending in (False, True):
        assert len(storage.page_keys(org_id, pod_id, ascending, None, 2)) == 2
        first = storage.key_page_query(org_id, pod_id, ascending, None, 2)
        after = storage.key_page_query(org_id, pod_id, ascending, ("2026-06-01T00:00:00.000000Z", "x"), 2)
        for statement, params in (first, after):
            if backend == "sqlite":
                plan = sqlite_plan(app.config["DB"], statement, params)
                assert f"USING INDEX {index}" in plan, plan
                assert "TEMP B-TREE" not in plan, plan  # the index gives the order: nothing sorted
            else:
                plan = postgres_plan(app.config["DB"], statement, params)
                assert f"Index Scan{'' if ascending else ' Backward'} using {index} on api_key" in plan, plan
                assert "Sort" not in plan and "Rows Removed by Filter" not in plan, plan
        # A page of everything live takes the same work with 20,000 deleted keys as with
        # none (walking past them took thousands of instructions, hundreds of buffers).
        cost, found = work(app, backend, *whole[ascending])
        assert found == live
        assert cost <= before[ascending][0] * 1.2 + 5, (cost, before[ascending])


def test_deleting_a_pod_still_deletes_its_deleted_keys_too(app, backend, sql):
    storage = storage_of(app)
    org_id, pod = live_keys(app)
    pile_up(app, org_id, pod, 10)
    assert storage.delete_pod(org_id, pod)
    assert sql("SELECT count(*) FROM api_key WHERE pod_id = ?", (pod,)) == [(0,)]


def indexes(target) -> set[str]:
    if is_url(target):
        return {row[0] for row in dbtools.query(target, "SELECT indexname FROM pg_indexes"
                                                        " WHERE schemaname = current_schema() AND tablename = 'api_key'")}
    return {row[0] for row in dbtools.query(target, "SELECT name FROM sqlite_master WHERE type = 'index'"
                                                    " AND tbl_name = 'api_key'")}


def test_an_older_database_gets_the_live_key_indexes_as_it_upgrades(backend, database):
    from pods import close_app, create_app
    from pods.storage import postgres, sqlite

    if backend == "sqlite":
        import shutil
        from pathlib import Path

        shutil.copy(Path(__file__).parent.parent / "fixtures" / "v2.db", database)
    else:  # PostgreSQL version 1, as the pods before this one made it
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("CREATE TABLE pods_schema (version integer NOT NULL)")
            conn.execute("INSERT INTO pods_schema VALUES (1)")
            conn.execute(postgres.SCRIPTS[0].read_text())
    assert "api_key_org_live_page" not in indexes(database)
    app = create_app({"DB": database})
    try:
        found = indexes(database)
        assert {"api_key_org_live_page", "api_key_pod_live_page", "api_key_pod_page"} <= found
        assert "api_key_org_page" not in found
        version = storage_of(app).schema_version()
        assert version == (sqlite.SCHEMA_VERSION if backend == "sqlite" else postgres.SCHEMA_VERSION)
    finally:
        close_app(app)
