import sqlite3

import pytest

from helpers import storage_of

from pods import close_app, create_app
from pods.storage import sqlite as db


def test_schema_is_applied_once_and_idempotently_sqlite(tmp_path):
    path = str(tmp_path / "p.db")
    db.init_db(path)
    db.init_db(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"organization", "api_key", "pod", "setting"} <= tables
    finally:
        conn.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_connections_enforce_foreign_keys_and_full_sync_sqlite(app):
    storage = storage_of(app)
    conn = storage.connection()
    assert conn is storage.connection()  # one connection per thread, reused
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO pod VALUES ('p', 999, 'n', NULL, 'now')")


def test_a_replicated_database_leaves_checkpoints_to_litestream_up_to_a_safety_net_sqlite(tmp_path):
    """Serving with --replica, requests' commits checkpoint only past
    REPLICATED_CHECKPOINT_PAGES (Litestream checkpoints at 1,000 once it has copied
    the frames); otherwise at SQLite's 1,000."""
    path = str(tmp_path / "r.db")
    for replicated, pages in ((True, db.REPLICATED_CHECKPOINT_PAGES), (False, 1000)):
        app = create_app({"TESTING": True, "DB": path, "REPLICATED": replicated})
        try:
            conn = storage_of(app).connection()
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == pages
        finally:
            close_app(app)


def test_a_newer_schema_is_refused_sqlite(tmp_path):
    path = str(tmp_path / "p.db")
    db.init_db(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {db.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(db.SchemaTooNew, match="newer than this server"):
        create_app({"DB": path})


def test_page_token_secret_survives_restarts(database):
    first, second = (create_app({"DB": database}) for _ in range(2))
    for app in (first, second):
        storage_of(app).close()
    first, second = first.config["PAGE_TOKEN_SECRET"], second.config["PAGE_TOKEN_SECRET"]
    assert first == second and len(first) == 32
