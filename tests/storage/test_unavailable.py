"""Database trouble while serving: a JSON 503 that changes nothing, then recovery."""

import sqlite3

import pytest

from conftest import storage_of

from pods import create_app
from pods.storage import sqlite

URL = "/agent/v0/pods"


@pytest.fixture
def quick_app(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_MS", 200)  # not 5 s per locked request
    app = create_app({"TESTING": True, "DB": str(tmp_path / "u.db")})
    yield app
    storage_of(app).close()


@pytest.fixture
def key(quick_app):
    from pods.api.auth import hash_key

    with quick_app.app_context():
        storage_of(quick_app).insert_api_key("acme", hash_key("k"), "k")
    return {"Authorization": "Bearer k"}


def assert_503(r):
    assert r.status_code == 503
    assert r.json == {
        "name": "ServiceUnavailableError",
        "code": "service_unavailable",
        "message": "Service unavailable; try again shortly.",
    }


def test_locked_beyond_the_busy_timeout_is_503_then_recovers_sqlite(quick_app, key, caplog):
    client = quick_app.test_client()
    pod = client.post(URL, json={"name": "before"}, headers=key).json
    holder = sqlite3.connect(quick_app.config["DB"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert_503(client.post(URL, json={"name": "blocked"}, headers=key))
        assert_503(client.delete(f"{URL}/{pod['pod_id']}", headers=key))
        # Reads still work: WAL readers do not wait for writers.
        assert client.get(f"{URL}/{pod['pod_id']}", headers=key).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "database unavailable: database is locked" in caplog.text
    assert client.post(URL, json={"name": "after"}, headers=key).status_code == 200
    names = [p["name"] for p in client.get(URL, headers=key).json["pods"]]
    assert names == ["after", "before"]


def test_disk_full_is_503_then_recovers_sqlite(quick_app, key):
    client = quick_app.test_client()
    client.post(URL, json={"name": "first"}, headers=key)
    with quick_app.app_context():
        conn = storage_of(quick_app).connection()
        # SQLite's own "disk is full": the file may not grow past its current pages.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        full = [client.post(URL, json={"name": "x" * 255, "client_id": f"c{i}"}, headers=key) for i in range(200)]
        assert_503(full[-1])
        conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    accepted = [r.json["name"] for r in full if r.status_code == 200]
    assert client.post(URL, json={"name": "after"}, headers=key).status_code == 200
    listed = client.get(URL, query_string={"limit": 100}, headers=key).json
    assert listed["count"] == len(accepted) + 2  # nothing half-written


def assert_healthz(client, status):
    r = client.get("/healthz")
    assert r.status_code == status, r.json
    if status == 503:
        assert r.json["name"] == "ServiceUnavailableError"


def test_healthz_says_503_while_writes_fail_on_a_lock_then_200_sqlite(quick_app, key):
    client = quick_app.test_client()
    assert_healthz(client, 200)
    holder = sqlite3.connect(quick_app.config["DB"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert_503(client.post(URL, json={"name": "blocked"}, headers=key))
        assert_healthz(client, 503)  # reads work, writes do not: not healthy
        assert_healthz(client, 503)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_healthz(client, 200)
    assert client.post(URL, json={"name": "after"}, headers=key).status_code == 200


def test_healthz_says_503_while_the_disk_is_full_then_200_sqlite(quick_app, key, monkeypatch):
    client = quick_app.test_client()
    client.post(URL, json={"name": "first"}, headers=key)
    pages = storage_of(quick_app).connection().execute("PRAGMA page_count").fetchone()[0]
    real_connect = sqlite.connect

    def full(*args, **kwargs):  # SQLite's own "disk is full", on every connection opened meanwhile
        conn = real_connect(*args, **kwargs)
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn

    storage_of(quick_app).close()
    monkeypatch.setattr(sqlite, "connect", full)
    answers = [client.post(URL, json={"name": "x" * 255, "client_id": f"c{i}"}, headers=key) for i in range(200)]
    assert answers[-1].status_code == 503
    assert_healthz(client, 503)
    assert_healthz(client, 503)
    monkeypatch.setattr(sqlite, "connect", real_connect)  # space again
    storage_of(quick_app).close()
    assert_healthz(client, 200)
    listed = client.get(URL, query_string={"limit": 100}, headers=key).json["count"]
    assert listed == 1 + sum(r.status_code == 200 for r in answers)  # the probes left nothing behind
