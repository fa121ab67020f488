"""What the key tests share: keys stored directly, a world of two organizations
with pods and keys of every scope (made once per module and copied per test), and
the shapes of a refusal. Fixtures are imported by name into each test module."""


import os
import shutil
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
from agentmail.api_keys.types.api_key_permissions import ApiKeyPermissions

from helpers import new_database, storage_of
from dbtools import query
from pods import close_app, create_app
from pods.api.permissions import PERMISSIONS, stored_permissions
from pods.api.auth import hash_key, new_token, token_prefix, unauthenticated_situation
from pods.api.errors import error_body
from pods.storage import open_storage

API = "/agent/v0"
LIMITED = ["pod_read", "api_key_read", "api_key_create", "api_key_update", "api_key_delete", "inbox_read"]
# The permission names the contract gives: the SDK's, in its order.
SDK_PERMISSIONS = tuple(ApiKeyPermissions.model_fields)
GATING = ("pod_read", "pod_create", "pod_delete", "api_key_read", "api_key_create", "api_key_update", "api_key_delete")
POD_NOT_FOUND = error_body("pod_not_found")
KEY_NOT_FOUND = error_body("api_key_not_found")
CREATED_FIELDS = {"api_key_id", "api_key", "prefix", "name", "created_at"}
KEY_FIELDS = {"type", "api_key_id", "prefix", "name", "created_at", "updated_at"}


class Key(NamedTuple):
    token: str
    key_id: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


def at(delta: timedelta) -> str:
    """An RFC 3339 time ``delta`` from now, as a client writes it."""
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def stored_time(delta: timedelta) -> str:
    """A time ``delta`` from now, as the server stores and shows it."""
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def store_key(app, org="acme", pod_id=None, permissions=None, expires_at=None, name=None) -> Key:
    """A key stored directly (as the CLI does), so that what is tested is never also the set-up."""
    token = new_token()
    granted = None if permissions is None else stored_permissions(frozenset(permissions))
    row = storage_of(app).insert_api_key(org, hash_key(token), token_prefix(token), name, pod_id, granted, expires_at)
    return Key(token, row["key_id"])


@pytest.fixture
def new_key(app):
    """new_key(org, pod_id, permissions, expires_at, name) -> Key (``store_key``)."""
    return lambda *args, **kwargs: store_key(app, *args, **kwargs)


def call(client, method, path, key=None, body=None, **kwargs):
    headers = kwargs.pop("headers", {}) | (key.headers if key else {})
    return client.open(API + path, method=method, headers=headers, json=body, **kwargs)


def but(*missing) -> list:
    """Every permission the SDK names but ``missing``."""
    return [name for name in SDK_PERMISSIONS if name not in missing]


ESCALATION = "permission_escalation"


def assert_forbidden(r, *words, code="missing_permission"):
    """A 403 in the contract's shape, of the kind ``code``, its message and fix naming
    each of ``words``."""
    assert r.status_code == 403, (r.status_code, r.json)
    assert set(r.json) == {"name", "code", "message", "fix"}
    assert (r.json["name"], r.json["code"]) == ("ForbiddenError", code)
    assert all(word in r.json["message"] for word in words), r.json["message"]
    names = [word for word in words if word in PERMISSIONS]
    assert all(word in r.json["fix"] for word in names), r.json["fix"]


def assert_unauthorized(r):
    """The one 401 of a token that is not a live key; without a bearer token at all,
    the code says that instead (nothing about any key)."""
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    header = r.request.headers.get("Authorization")
    code = unauthenticated_situation(header)
    assert r.json == error_body(code)
    assert r.json["code"] == code and r.json["fix"]


@pytest.fixture
def state(sql):
    """state() -> every key and pod as stored (but used_at): to show a refusal changed nothing."""

    def read():
        keys = sql("SELECT key_id, org_id, pod_id, prefix, name, permissions, created_at, updated_at, expires_at,"
                   " revoked_at FROM api_key ORDER BY key_id")
        return keys, sql("SELECT * FROM pod ORDER BY pod_id")

    return read


class World(NamedTuple):
    """Organization acme: pods A and B; its organization key ``root``; ``pod_key``
    scoped to A; targets to act on: ``org_key`` (another organization key),
    ``a_key`` (of pod A), ``b_key`` (of pod B). ``other``: a key of globex, which has
    a pod G and another key ``g_key``. Every key has every permission."""

    root: Key
    pod_key: Key
    other: Key
    A: str
    B: str
    G: str
    org_key: str
    a_key: str
    b_key: str
    g_key: str

    def path(self, template: str) -> str:
        return template.format(**self._asdict())

    def caller(self, who: str) -> Key:
        return {"org": self.root, "pod": self.pod_key, "other": self.other}[who]


@pytest.fixture(scope="module")
def world_template(tmp_path_factory):
    """The world, made once in a database of its own: (its path, the World)."""
    path = tmp_path_factory.mktemp("world") / "world.db"
    app = create_app({"TESTING": True, "DB": str(path)})
    try:
        client = app.test_client()
        root, other = store_key(app, "acme", name="root"), store_key(app, "globex", name="globex root")
        A, B = (call(client, "POST", "/pods", root, {"name": n}).json["pod_id"] for n in "AB")
        G = call(client, "POST", "/pods", other, {"name": "G"}).json["pod_id"]
        world = World(
            root=root, pod_key=store_key(app, "acme", A, name="pod A's"), other=other, A=A, B=B, G=G,
            org_key=store_key(app, "acme", name="org").key_id, a_key=store_key(app, "acme", A, name="a").key_id,
            b_key=store_key(app, "acme", B, name="b").key_id, g_key=store_key(app, "globex", G, name="g").key_id,
        )
    finally:
        storage_of(app).close()
    return path, world


@pytest.fixture(scope="module")
def postgres_schema(request):
    """One schema for this module's PostgreSQL tests, emptied and refilled per test
    (much faster than a new schema and its tables each time)."""
    database = new_database("postgres", None, request)
    storage = open_storage(database)
    try:
        storage.prepare()
    finally:
        storage.close()
    return database


@pytest.fixture
def app(backend, tmp_path, world_template, request):
    """conftest's app, on a copy of the world's database (made once: a world costs a
    dozen synchronous commits, and hundreds of tests start from one). On PostgreSQL
    the copy is made with ``copy``'s own machinery."""
    if backend == "sqlite":
        database = new_database(backend, tmp_path, request)
        for companion in ("", "-wal"):
            if os.path.exists(f"{world_template[0]}{companion}"):
                shutil.copy(f"{world_template[0]}{companion}", f"{database}{companion}")
    else:
        database = request.getfixturevalue("postgres_schema")
        query(database, "TRUNCATE organization, pod, api_key, setting RESTART IDENTITY")
        source, target = open_storage(str(world_template[0]), read_only=True), open_storage(database)
        try:
            with source.snapshot() as rows_of:
                target.import_all(rows_of)
        finally:
            source.close()
            target.close()
    app = create_app({"TESTING": True, "DB": database})
    yield app
    close_app(app)


@pytest.fixture
def world(app, world_template):
    return world_template[1]
