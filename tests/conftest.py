import sqlite3

import pytest

from pods import create_app
from pods.storage import EXTENSION_KEY
from pods.auth import hash_key, new_token, token_prefix


@pytest.fixture
def app(tmp_path):
    app = create_app({"TESTING": True, "DB": str(tmp_path / "pods.db")})
    yield app
    storage_of(app).close()


def storage_of(app):
    """The app's storage (pods.storage), for tests that set up or read data directly."""
    return app.extensions[EXTENSION_KEY]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_key(app):
    """make_key(org) -> (headers, key_id): a new key of ``org`` as request headers."""

    def make(org="acme"):
        token = new_token()
        key_id = storage_of(app).insert_api_key(org, hash_key(token), token_prefix(token))["key_id"]
        return {"Authorization": f"Bearer {token}"}, key_id

    return make


@pytest.fixture
def headers(make_key):
    return make_key("acme")[0]


@pytest.fixture
def sql(app):
    """sql(statement, params) -> rows, read from the app's database file directly."""

    def run(statement, params=()):
        conn = sqlite3.connect(app.config["DB"])
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()

    return run


@pytest.fixture
def create(client, headers):
    """create(**fields) -> the created pod's JSON, asserting a 200."""

    def make(hdrs=None, **fields):
        r = client.post("/agent/v0/pods", json=fields, headers=hdrs or headers)
        assert r.status_code == 200, r.json
        return r.json

    return make


@pytest.fixture
def live_server(tmp_path):
    """A real ``python app.py`` on a free loopback port, stopped with SIGTERM."""
    from live import Server

    server = Server(tmp_path / "live.db")
    yield server
    assert server.stop() == 0
