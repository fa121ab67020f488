"""The fixtures every folder shares: databases on each backend, the app and its
client, keys, real servers (always stopped and checked), and the guard that keeps
every test starting a process marked ``live``."""

import logging
import os
import secrets
import shutil
import sys

import dbtools
import pytest
from helpers import Server, new_database, storage_of

from pods import close_app, create_app
from pods.api.auth import hash_key, new_token, token_prefix
from pods.storage import open_storage
from pods.storage.url import redact

# -- the live marker: a test that starts a process says so ---------------------------------

_running = None  # the test item running in this process, if any


def _refuse_unmarked_processes(event, args):
    if event == "subprocess.Popen" and _running is not None and _running.get_closest_marker("live") is None:
        raise pytest.fail.Exception(
            f"{_running.nodeid} starts a process ({args[1]!r}) but is not marked live: "
            f"add @pytest.mark.live (or pytestmark = pytest.mark.live for the whole file)")


def pytest_configure(config):
    sys.addaudithook(_refuse_unmarked_processes)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _running
    _running = item
    # A command run in-process (``migrate``) points the root logger at stderr for good;
    # later tests' request lines would then reach the terminal. Each test gets it back as it was.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return (yield)
    finally:
        _running = None
        root.handlers[:] = handlers
        root.setLevel(level)


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


@pytest.fixture
def database(backend, tmp_path, request):
    """A new, empty database for one test, on each backend in turn."""
    return new_database(backend, tmp_path, request)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite database at the current schema and holding nothing, made once: an
    app's new database starts as a copy of it, which costs a file copy instead of
    every migration's transaction (each an fsync)."""
    path = tmp_path_factory.mktemp("template") / "pods.db"
    storage = open_storage(str(path))
    storage.prepare()
    storage.close()
    return path


@pytest.fixture
def app(database, sqlite_template):
    if not dbtools.is_url(database) and not os.path.exists(database):
        shutil.copyfile(sqlite_template, database)
        os.chmod(database, 0o600)  # as pods makes it
    app = create_app({"TESTING": True, "DB": database})
    yield app
    close_app(app)


@pytest.fixture
def clock(app):
    """Freeze the time the app's storage gives new pods and keys and checks expiry
    against, on either backend: clock.set(ts) makes every following write use ``ts``."""

    class Clock:
        now = "2026-01-01T00:00:00.000000Z"

        def set(self, ts):
            self.now = ts

        def __call__(self):
            return self.now

    c = Clock()
    storage_of(app).clock = c
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
def servers():
    """servers(db, *args, **kwargs) -> a started ``helpers.Server``. At the end every
    server it started is stopped, and only then are their exit statuses checked (0,
    or the ``expect_exit`` each was given), so that one failing leaks no other."""
    started = []

    def start(*args, **kwargs):
        started.append(Server(*args, **kwargs))
        return started[-1]

    yield start
    problems = []
    for server in started:
        try:
            server.close()
        except AssertionError as e:
            problems.append(str(e))
    assert problems == []


@pytest.fixture
def live_server(database, tmp_path):
    """A real ``python app.py`` on a free loopback port, stopped with SIGTERM."""
    with Server(database, workdir=tmp_path) as server:
        yield server
