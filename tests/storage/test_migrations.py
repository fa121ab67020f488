"""Databases made by older versions upgrade in place and keep everything."""

import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from live import Server

from conftest import storage_of

from pods import create_app
from pods.storage import sqlite as db

FIXTURES = Path(__file__).parent.parent / "fixtures"
# Both fixtures hold the same data: v2.db is v1.db taken to version 2 by the pods of then.
TOKENS = {"v1-token-acme": "acme", "v1-token-globex": "globex", "v1-token-initech": "initech"}
REVOKED = "v1-token-acme-revoked"


def dump(path, tables=("organization", "api_key", "pod")):
    conn = sqlite3.connect(path)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in tables}
    finally:
        conn.close()


def keys_of(path):
    """Each key's id, organization, hash, creation and revocation: what every version keeps."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT key_id, org_id, key_hash, created_at, revoked_at FROM api_key ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()


def version(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def copy_of(fixture_version, tmp_path):
    path = str(tmp_path / f"old-v{fixture_version}.db")
    shutil.copy(FIXTURES / f"v{fixture_version}.db", path)
    assert version(path) == fixture_version
    return path


@pytest.fixture
def v1_copy(tmp_path):
    return copy_of(1, tmp_path)


def test_migrations_are_numbered_without_gaps_sqlite():
    assert [int(p.name[:4]) for p in db.MIGRATIONS] == list(range(2, db.SCHEMA_VERSION + 1))


@pytest.mark.parametrize("fixture_version", [1, 2])
def test_an_older_database_upgrades_keeping_every_pod_and_key_as_an_organization_key_with_every_permission_sqlite(
    tmp_path, fixture_version
):
    path = copy_of(fixture_version, tmp_path)
    before = dump(path, ("organization", "pod"))
    keys_before = keys_of(path)
    assert len(before["pod"]) == 36 and len(keys_before) == 4
    app = create_app({"TESTING": True, "DB": path})
    try:
        assert version(path) == db.SCHEMA_VERSION
        assert dump(path, ("organization", "pod")) == before
        assert keys_of(path) == keys_before
        assert len(app.config["PAGE_TOKEN_SECRET"]) == 32  # added by this start
        client = app.test_client()
        for token, org in TOKENS.items():
            auth = {"Authorization": f"Bearer {token}"}
            pods = client.get("/agent/v0/pods", query_string={"limit": 100}, headers=auth).json["pods"]
            assert len(pods) == 12
            assert all(p["name"].startswith(org) for p in pods)
            keys = [(p["created_at"], p["pod_id"]) for p in pods]
            assert keys == sorted(keys, reverse=True)
            # An organization key with every permission: it sees its organization's
            # keys, each shown without a permissions object (every permission) and
            # named after its id (its token, and so its prefix, was never stored).
            listed = client.get("/agent/v0/api-keys", headers=auth).json["api_keys"]
            assert listed and all("permissions" not in k and "pod_id" not in k for k in listed)
            assert all(k["name"] == f"key {k['api_key_id']}" and k["prefix"] == "" for k in listed)
            made = client.post("/agent/v0/api-keys", json={"name": "after the upgrade"}, headers=auth)
            assert made.status_code == 200 and "permissions" not in made.json
        r = client.get("/agent/v0/pods", headers={"Authorization": f"Bearer {REVOKED}"})
        assert r.status_code == 401
    finally:
        storage_of(app).close()


def test_serving_an_older_database_logs_each_step_sqlite(v1_copy):
    server = Server(v1_copy)
    try:
        r = httpx.get(server.url + "/agent/v0/pods", params={"limit": 100},
                      headers={"Authorization": "Bearer v1-token-acme"})
        assert r.status_code == 200 and r.json()["count"] == 12
    finally:
        assert server.stop() == 0
    steps = [line.split(" INFO pods.db ")[1] for line in server.stderr.splitlines() if " INFO pods.db " in line]
    assert steps == [f"migrating schema {v} → {v + 1}" for v in range(1, db.SCHEMA_VERSION)]
    assert version(v1_copy) == db.SCHEMA_VERSION


def test_the_upgrade_uses_the_new_page_index_sqlite(v1_copy):
    storage_of(create_app({"DB": v1_copy})).close()
    conn = sqlite3.connect(v1_copy)
    try:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT pod_id, name, client_id, created_at FROM pod WHERE org_id = 1"
            " AND (created_at, pod_id) < ('x', 'y') ORDER BY created_at DESC, pod_id DESC LIMIT 11"
        ).fetchall()
    finally:
        conn.close()
    assert "pod_org_page" in indexes and "pod_org_order" not in indexes
    assert "COVERING INDEX pod_org_page" in plan[0][3]


def test_a_failing_migration_changes_nothing_sqlite(v1_copy, tmp_path, monkeypatch):
    broken = tmp_path / "0002-broken.sql"
    broken.write_text(
        "BEGIN IMMEDIATE;\n"
        "DROP INDEX pod_org_order;\n"
        "CREATE TABLE pod (x);\n"  # fails: the table exists
        "PRAGMA user_version = 2;\n"
        "COMMIT;\n"
    )
    monkeypatch.setattr(db, "MIGRATIONS", [broken])
    monkeypatch.setattr(db, "SCHEMA_VERSION", 2)
    before = dump(v1_copy)
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        db.init_db(v1_copy)
    assert version(v1_copy) == 1
    assert dump(v1_copy) == before
    conn = sqlite3.connect(v1_copy)
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'pod_org_order'").fetchone() == (1,)
    finally:
        conn.close()
