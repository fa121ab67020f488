import os
import secrets

import dbtools
import pytest

from pods import close_app, create_app
from pods.api.auth import hash_key, new_token, token_prefix
from pods.api.application import STORAGE_EXTENSION as EXTENSION_KEY
from pods.storage.url import redact


@pytest.fixture(scope="session")
def postgres():
    """The URL of a PostgreSQL database of this test run's own, dropped at its end.

    No server answering: the PostgreSQL tests are skipped, with the reason, except
    under CI=true, where that fails them: a green CI run means both backends passed.
    """
    import psycopg

    try:
        admin = psycopg.connect(dbtools.ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        reason = (f"PostgreSQL tests need a server at PODS_TEST_POSTGRES ({redact(dbtools.ADMIN_URL)}): "
                  f"{str(e).strip().splitlines()[0]}")
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    name = f"pods_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dbtools.with_database(dbtools.ADMIN_URL, name)
    finally:
        dbtools.close_connections()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=dbtools.BACKENDS)
def backend(request):
    return request.param


def new_database(backend: str, folder, request) -> str:
    """A new, empty database: a file in ``folder`` (SQLite) or a URL (PostgreSQL)."""
    if backend == "sqlite":
        return str(folder / "pods.db")
    return dbtools.new_schema(request.getfixturevalue("postgres"))


@pytest.fixture
def database(backend, tmp_path, request):
    """A new, empty database for one test, on each backend in turn."""
    return new_database(backend, tmp_path, request)


@pytest.fixture
def app(database):
    app = create_app({"TESTING": True, "DB": database})
    yield app
    close_app(app)


def storage_of(app):
    """The app's storage (pods.storage), for tests that set up or read data directly."""
    return app.extensions[EXTENSION_KEY]


@pytest.fixture
def clock(monkeypatch):
    """Freeze the time new pods and keys are given, on either backend (in this
    process): clock.set(ts) makes every following create use ``ts``."""
    from pods.storage import postgres, sqlite

    class Clock:
        now = "2026-01-01T00:00:00.000000Z"

        def set(self, ts):
            self.now = ts

        def __format__(self, spec):  # how PostgreSQL statements spell their clock
            return f"'{self.now}'::timestamptz"

    c = Clock()
    monkeypatch.setattr(sqlite, "utc_now", lambda: c.now)
    monkeypatch.setattr(postgres, "NOW", c)
    return c


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
    """sql(statement, params) -> rows, read from the app's database directly."""
    return lambda statement, params=(): dbtools.query(app.config["DB"], statement, params)


@pytest.fixture
def create(client, headers):
    """create(**fields) -> the created pod's JSON, asserting a 200."""

    def make(hdrs=None, **fields):
        r = client.post("/agent/v0/pods", json=fields, headers=hdrs or headers)
        assert r.status_code == 200, r.json
        return r.json

    return make


@pytest.fixture
def live_server(database, tmp_path):
    """A real ``python app.py`` on a free loopback port, stopped with SIGTERM."""
    from live import Server

    server = Server(database, workdir=tmp_path)
    yield server
    assert server.stop() == 0
