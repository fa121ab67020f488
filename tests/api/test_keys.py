"""API keys over the API, in-process: what each key endpoint answers, which key
may do what (the scope and permission matrices), no escalation, validation, the
order of the checks, paging, used_at, and what pod deletion and the CLI do to
keys. Real servers (the SDK, two workers, expiry by the clock): test_keys_live.py."""

import os
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
from agentmail.api_keys.types.api_key_permissions import ApiKeyPermissions
from click.testing import CliRunner

from conftest import new_database, storage_of
from dbtools import query
from pods import close_app, create_app
from pods.api import keyuse
from pods.api.permissions import stored_permissions
from pods.api.auth import hash_key, new_token, token_prefix
from pods.cli import cli
from pods.storage import open_storage

API = "/agent/v0"
# The permission names the contract gives: the SDK's, in its order.
SDK_PERMISSIONS = tuple(ApiKeyPermissions.model_fields)
GATING = ("pod_read", "pod_create", "pod_delete", "api_key_read", "api_key_create", "api_key_update", "api_key_delete")
POD_NOT_FOUND = {"name": "NotFoundError", "code": "not_found", "message": "Pod not found."}
KEY_NOT_FOUND = {"name": "NotFoundError", "code": "not_found", "message": "API key not found."}
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


def assert_forbidden(r, *words):
    """A 403 in the contract's shape, its message naming each of ``words``."""
    assert r.status_code == 403, (r.status_code, r.json)
    assert set(r.json) == {"name", "code", "message"}
    assert (r.json["name"], r.json["code"]) == ("ForbiddenError", "forbidden")
    assert all(word in r.json["message"] for word in words), r.json["message"]


def assert_unauthorized(r):
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json == {"name": "UnauthorizedError", "code": "unauthorized", "message": "A valid API key is required."}


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


# -- shapes ---------------------------------------------------------------------------


def test_a_created_key_shows_its_token_once_prefix_and_name(client, world, sql):
    r = call(client, "POST", "/api-keys", world.root)
    assert r.status_code == 200
    made = r.json
    assert set(made) == CREATED_FIELDS  # no type, used_at, updated_at; no pod_id, permissions, expires_at unset
    token = made["api_key"]
    assert token.startswith("pods_") and len(token) >= 40
    assert made["prefix"] == token[:12] and made["name"] == made["prefix"]
    assert made["created_at"].endswith("Z")

    got = call(client, "GET", f"/api-keys/{made['api_key_id']}", world.root).json
    assert set(got) == KEY_FIELDS
    assert got["type"] == "bearer" and got["created_at"] == got["updated_at"] == made["created_at"]
    same = ("api_key_id", "prefix", "name")
    assert {k: got[k] for k in same} == {k: made[k] for k in same}
    listed = call(client, "GET", "/api-keys", world.root, query_string={"limit": 100})
    assert token not in listed.get_data(as_text=True) and token[12:] not in repr(sql("SELECT * FROM api_key"))

    # The token works, as an organization key with every permission.
    new = Key(token, made["api_key_id"])
    assert call(client, "GET", f"/pods/{world.B}", new).status_code == 200
    assert call(client, "POST", "/pods", new, {"name": "by the new key"}).status_code == 200


def test_a_pod_key_with_everything_set_shows_everything(client, world):
    expires = at(timedelta(days=3))
    body = {"name": "agent", "permissions": {"pod_read": True, "pod_delete": False, "inbox_read": None},
            "expires_at": expires}
    made = call(client, "POST", f"/pods/{world.A}/api-keys", world.root, body).json
    assert set(made) == CREATED_FIELDS | {"pod_id", "permissions", "expires_at"}
    assert (made["name"], made["pod_id"], made["permissions"]) == ("agent", world.A, {"pod_read": True})
    assert datetime.fromisoformat(made["expires_at"]) == datetime.fromisoformat(expires)
    got = call(client, "GET", f"/api-keys/{made['api_key_id']}", world.root).json
    assert set(got) == KEY_FIELDS | {"pod_id", "permissions", "expires_at"}
    assert {k: got[k] for k in ("pod_id", "permissions", "expires_at")} == {
        k: made[k] for k in ("pod_id", "permissions", "expires_at")}


def test_every_sdk_permission_name_is_accepted_and_returned(client, world):
    every = {name: True for name in SDK_PERMISSIONS}
    made = call(client, "POST", "/api-keys", world.root, {"permissions": every}).json
    assert made["permissions"] == every
    none = call(client, "POST", "/api-keys", world.root, {"permissions": {}}).json
    assert none["permissions"] == {}
    # A key with no permission at all authenticates, and may do nothing.
    assert_forbidden(call(client, "GET", "/pods", Key(none["api_key"], none["api_key_id"])), "pod_read")


def test_keys_made_by_the_cli_are_organization_keys_with_every_permission(app, client, world):
    result = CliRunner().invoke(cli, ["keys", "create", "--org", "acme", "--name", "ops", "--db", app.config["DB"]])
    assert result.exit_code == 0, result.output
    token = result.stdout.splitlines()[-1]
    listed = call(client, "GET", "/api-keys", world.root, query_string={"limit": 100}).json["api_keys"]
    mine = [k for k in listed if k["prefix"] == token[:12]]
    assert len(mine) == 1 and mine[0]["name"] == "ops"
    assert "pod_id" not in mine[0] and "permissions" not in mine[0]
    key = Key(token, mine[0]["api_key_id"])
    assert call(client, "DELETE", f"/pods/{world.B}", key).status_code == 200
    assert call(client, "DELETE", f"/api-keys/{world.a_key}", key).status_code == 200


@pytest.mark.parametrize("method,path,allowed", [
    ("PUT", "/api-keys", {"GET", "POST"}),
    ("DELETE", "/api-keys", {"GET", "POST"}),
    ("PATCH", "/api-keys", {"GET", "POST"}),
    ("POST", "/api-keys/{a_key}", {"GET", "PATCH", "DELETE"}),
    ("PUT", "/api-keys/{a_key}", {"GET", "PATCH", "DELETE"}),
    ("DELETE", "/pods/{A}/api-keys", {"GET", "POST"}),
    ("PATCH", "/pods/{A}/api-keys", {"GET", "POST"}),
    ("GET", "/pods/{A}/api-keys/{a_key}", {"PATCH", "DELETE"}),  # the SDK has no get under a pod
    ("POST", "/pods/{A}/api-keys/{a_key}", {"PATCH", "DELETE"}),
    ("PATCH", "/pods/{A}", {"GET", "DELETE"}),  # no endpoint changes a pod
])
def test_a_method_a_key_route_lacks_is_405_with_allow(client, world, state, method, path, allowed):
    before = state()
    body = {"name": "x"} if method in ("POST", "PUT", "PATCH") else None
    r = call(client, method, world.path(path), world.root, body)
    assert r.status_code == 405
    assert r.json == {"name": "MethodNotAllowedError", "code": "method_not_allowed", "message": "Method not allowed."}
    assert {m.strip() for m in r.headers["Allow"].split(",")} - {"HEAD", "OPTIONS"} == allowed
    assert state() == before


KEY_ENDPOINTS = [
    ("GET", "/api-keys"), ("POST", "/api-keys"), ("GET", "/api-keys/{a_key}"), ("PATCH", "/api-keys/{a_key}"),
    ("DELETE", "/api-keys/{a_key}"), ("GET", "/pods/{A}/api-keys"), ("POST", "/pods/{A}/api-keys"),
    ("PATCH", "/pods/{A}/api-keys/{a_key}"), ("DELETE", "/pods/{A}/api-keys/{a_key}"),
]


@pytest.mark.parametrize("method,path", KEY_ENDPOINTS)
@pytest.mark.parametrize("credentials", [
    None, "Bearer pods_unknown", "Basic {token}", "Bearer {token} ", "Bearer {token}x", "Bearer {upper}",
], ids=["none", "unknown", "basic", "padded", "longer", "upper-case"])
def test_every_key_endpoint_needs_a_valid_key(client, world, state, method, path, credentials):
    before = state()
    token = world.root.token
    headers = {} if credentials is None else {"Authorization": credentials.format(token=token, upper=token.upper())}
    assert_unauthorized(call(client, method, world.path(path), body={"name": "x"}, headers=headers))
    assert state() == before


# -- the scope matrix -------------------------------------------------------------------

# Every pod and key endpoint, for pod A, pod B and the organization's keys: the
# status for the organization's key, pod A's key and a key of another organization.
SCOPE_MATRIX = {
    ("GET", "/pods"): (200, 200, 200),
    ("POST", "/pods"): (200, 403, 200),
    ("GET", "/pods/{A}"): (200, 200, 404),
    ("GET", "/pods/{B}"): (200, 404, 404),
    ("DELETE", "/pods/{A}"): (200, 200, 404),
    ("DELETE", "/pods/{B}"): (200, 404, 404),
    ("GET", "/api-keys"): (200, 200, 200),
    ("POST", "/api-keys"): (200, 403, 200),
    ("GET", "/api-keys/{org_key}"): (200, 404, 404),
    ("GET", "/api-keys/{a_key}"): (200, 200, 404),
    ("GET", "/api-keys/{b_key}"): (200, 404, 404),
    ("PATCH", "/api-keys/{org_key}"): (200, 404, 404),
    ("PATCH", "/api-keys/{a_key}"): (200, 200, 404),
    ("PATCH", "/api-keys/{b_key}"): (200, 404, 404),
    ("DELETE", "/api-keys/{org_key}"): (200, 404, 404),
    ("DELETE", "/api-keys/{a_key}"): (200, 200, 404),
    ("DELETE", "/api-keys/{b_key}"): (200, 404, 404),
    ("GET", "/pods/{A}/api-keys"): (200, 200, 404),
    ("GET", "/pods/{B}/api-keys"): (200, 404, 404),
    ("POST", "/pods/{A}/api-keys"): (200, 200, 404),
    ("POST", "/pods/{B}/api-keys"): (200, 404, 404),
    ("PATCH", "/pods/{A}/api-keys/{a_key}"): (200, 200, 404),
    ("PATCH", "/pods/{B}/api-keys/{b_key}"): (200, 404, 404),
    ("DELETE", "/pods/{A}/api-keys/{a_key}"): (200, 200, 404),
    ("DELETE", "/pods/{B}/api-keys/{b_key}"): (200, 404, 404),
    # A key named under a pod's route that is not that pod's key.
    ("PATCH", "/pods/{A}/api-keys/{b_key}"): (404, 404, 404),
    ("PATCH", "/pods/{A}/api-keys/{org_key}"): (404, 404, 404),
    ("DELETE", "/pods/{A}/api-keys/{b_key}"): (404, 404, 404),
    ("DELETE", "/pods/{A}/api-keys/{org_key}"): (404, 404, 404),
}
CALLERS = ("org", "pod", "other")
VISIBLE_PODS = {"org": {"{A}", "{B}"}, "pod": {"{A}"}, "other": set()}
BODIES = {"/pods": {"name": "new pod"}}


@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize("method,path", list(SCOPE_MATRIX))
def test_scope_matrix(client, world, state, sql, who, method, path):
    expected = SCOPE_MATRIX[method, path][CALLERS.index(who)]
    body = {"POST": BODIES.get(path, {"name": "new key"}), "PATCH": {"name": "renamed"}}.get(method)
    before = state()
    r = call(client, method, world.path(path), world.caller(who), body)
    assert r.status_code == expected, r.json
    if expected == 404:
        # The first thing named that the caller may not see is what was not found.
        pod = path.split("/")[2] if path.startswith("/pods/") else None
        pod_hidden = pod is not None and pod not in VISIBLE_PODS[who]
        assert r.json == (POD_NOT_FOUND if pod_hidden or not path.endswith("_key}") else KEY_NOT_FOUND)
    if expected == 403:
        assert_forbidden(r, f"scoped to pod {world.A}")
    if expected != 200:
        assert state() == before
        return
    # What a success did, as the owner of what was touched sees it.
    owner = world.other if who == "other" else world.root
    if method == "POST" and "api-keys" in path:
        made = r.json
        row = sql("SELECT o.name, k.pod_id FROM api_key k JOIN organization o USING (org_id) WHERE key_id = ?",
                  (made["api_key_id"],))
        pod = world.A if "{A}" in path else world.B if "{B}" in path else None
        assert row == [("globex" if who == "other" else "acme", pod)]
        assert made.get("pod_id") == pod
    if method == "POST" and path == "/pods":
        assert call(client, "GET", f"/pods/{r.json['pod_id']}", owner).status_code == 200
    if method == "PATCH":
        assert r.json["name"] == "renamed" and r.json["api_key_id"] == world.path(path).rsplit("/", 1)[1]
    if method == "DELETE":
        key_path = re.sub(r"^/pods/\{[AB]\}/api-keys/", "/api-keys/", path)
        assert call(client, "GET", world.path(key_path), owner).status_code == 404


@pytest.mark.parametrize("who,pods,keys", [
    ("org", {"A", "B"}, {"root", "pod_key", "org_key", "a_key", "b_key"}),
    ("pod", {"A"}, {"pod_key", "a_key"}),
    ("other", {"G"}, {"other", "g_key"}),
])
def test_lists_show_exactly_what_the_key_may_see(client, world, who, pods, keys):
    ids = {name: value.key_id if isinstance(value, Key) else value for name, value in world._asdict().items()}
    key = world.caller(who)
    listed = call(client, "GET", "/pods", key).json
    assert {p["pod_id"] for p in listed["pods"]} == {ids[p] for p in pods}
    listed = call(client, "GET", "/api-keys", key, query_string={"limit": 100}).json
    assert {k["api_key_id"] for k in listed["api_keys"]} == {ids[k] for k in keys}
    assert listed["count"] == len(keys)
    if who != "other":
        under_a = call(client, "GET", f"/pods/{world.A}/api-keys", key).json["api_keys"]
        assert {k["api_key_id"] for k in under_a} == {world.pod_key.key_id, world.a_key}
        assert {k["pod_id"] for k in under_a} == {world.A}


@pytest.mark.parametrize("who,method,hidden,ghost", [
    ("pod", "GET", "/pods/{B}", "/pods/no-such-pod"),
    ("pod", "DELETE", "/pods/{B}", "/pods/no-such-pod"),
    ("pod", "GET", "/api-keys/{org_key}", "/api-keys/0123456789abcdef"),
    ("pod", "PATCH", "/api-keys/{b_key}", "/api-keys/0123456789abcdef"),
    ("pod", "POST", "/pods/{B}/api-keys", "/pods/no-such-pod/api-keys"),
    ("pod", "DELETE", "/pods/{B}/api-keys/{b_key}", "/pods/no-such-pod/api-keys/{b_key}"),
    ("org", "DELETE", "/pods/{A}/api-keys/{b_key}", "/pods/{A}/api-keys/0123456789abcdef"),
    ("other", "GET", "/pods/{A}", "/pods/no-such-pod"),
    ("other", "GET", "/api-keys/{a_key}", "/api-keys/0123456789abcdef"),
    ("other", "PATCH", "/pods/{A}/api-keys/{a_key}", "/pods/no-such-pod/api-keys/{a_key}"),
    ("other", "GET", "/pods/{A}/api-keys", "/pods/no-such-pod/api-keys"),
])
def test_what_a_key_may_not_see_answers_as_if_it_did_not_exist(client, world, who, method, hidden, ghost):
    body = {"name": "x"} if method in ("POST", "PATCH") else None
    seen = call(client, method, world.path(hidden), world.caller(who), body)
    never = call(client, method, world.path(ghost), world.caller(who), body)
    assert seen.status_code == never.status_code == 404
    assert seen.get_data() == never.get_data()


# -- the permission matrix ---------------------------------------------------------------

GRANTABLE = {"name": "new", "permissions": {"inbox_read": True}}  # grants nothing the caller lacks
# Each endpoint, the body it is sent, and the one permission that gates it.
GATED = [
    ("GET", "/pods", None, "pod_read"),
    ("POST", "/pods", {"name": "new pod"}, "pod_create"),
    ("GET", "/pods/{A}", None, "pod_read"),
    ("DELETE", "/pods/{A}", None, "pod_delete"),
    ("GET", "/api-keys", None, "api_key_read"),
    ("POST", "/api-keys", GRANTABLE, "api_key_create"),
    ("GET", "/api-keys/{a_key}", None, "api_key_read"),
    ("PATCH", "/api-keys/{a_key}", {"name": "renamed"}, "api_key_update"),
    ("DELETE", "/api-keys/{a_key}", None, "api_key_delete"),
    ("GET", "/pods/{A}/api-keys", None, "api_key_read"),
    ("POST", "/pods/{A}/api-keys", GRANTABLE, "api_key_create"),
    ("PATCH", "/pods/{A}/api-keys/{a_key}", {"name": "renamed"}, "api_key_update"),
    ("DELETE", "/pods/{A}/api-keys/{a_key}", None, "api_key_delete"),
]
# What a pod-scoped key may not do whatever its permissions (checked after the permission).
ORGANIZATION_ONLY = {("POST", "/pods"), ("POST", "/api-keys")}


@pytest.mark.parametrize("scope", ["org", "pod"])
@pytest.mark.parametrize("missing", GATING)
@pytest.mark.parametrize("method,path,body,gate", GATED, ids=[f"{m} {p}" for m, p, _, _ in GATED])
def test_permission_matrix(client, world, new_key, state, scope, missing, method, path, body, gate):
    key = new_key("acme", world.A if scope == "pod" else None, but(missing))
    before = state()
    r = call(client, method, world.path(path), key, body)
    if gate == missing:
        assert_forbidden(r, missing)
        assert state() == before
    elif scope == "pod" and (method, path) in ORGANIZATION_ONLY:
        assert_forbidden(r, f"scoped to pod {world.A}")
        assert state() == before
    else:
        assert r.status_code == 200, r.json


def test_key_routes_under_a_pod_need_the_key_permission_not_pod_read(client, world, new_key):
    key = new_key("acme", world.A, ["api_key_read", "api_key_create", "api_key_update", "api_key_delete"])
    assert call(client, "GET", f"/pods/{world.A}/api-keys", key).status_code == 200
    made = call(client, "POST", f"/pods/{world.A}/api-keys", key, {"permissions": {"api_key_read": True}})
    assert made.status_code == 200
    path = f"/pods/{world.A}/api-keys/{made.json['api_key_id']}"
    assert call(client, "PATCH", path, key, {"name": "n"}).status_code == 200
    assert call(client, "DELETE", path, key).status_code == 200
    assert_forbidden(call(client, "GET", f"/pods/{world.A}", key), "pod_read")


# -- no escalation --------------------------------------------------------------------------

LIMITED = ["pod_read", "api_key_read", "api_key_create", "api_key_update", "api_key_delete", "inbox_read"]


def key_count(sql) -> int:
    return sql("SELECT count(*) FROM api_key")[0][0]


@pytest.mark.parametrize("scope,route", [("org", "/api-keys"), ("org", "/pods/{A}/api-keys"),
                                         ("pod", "/pods/{A}/api-keys")])
def test_a_key_cannot_create_a_key_with_a_permission_it_lacks(client, world, new_key, state, sql, scope, route):
    key = new_key("acme", world.A if scope == "pod" else None, LIMITED)
    path = world.path(route)
    before = state()
    assert_forbidden(call(client, "POST", path, key, {"permissions": {"pod_read": True, "pod_delete": True}}),
                     "pod_delete")
    for everything in ({}, {"permissions": None}, {"name": "all"}):  # absent or null: every permission
        assert_forbidden(call(client, "POST", path, key, everything), "pod_create", "pod_delete")
    assert state() == before

    granted = {"pod_read": True, "inbox_read": True}
    r = call(client, "POST", path, key, {"permissions": {**granted, "pod_delete": False, "pod_create": None}})
    assert r.status_code == 200 and r.json["permissions"] == granted
    assert key_count(sql) == len(before[0]) + 1


@pytest.mark.parametrize("scope,route", [("org", "/api-keys/{a_key}"), ("org", "/pods/{A}/api-keys/{a_key}"),
                                         ("pod", "/pods/{A}/api-keys/{a_key}"), ("pod", "/api-keys/{a_key}")])
def test_a_key_cannot_patch_in_a_permission_it_lacks(client, world, new_key, state, scope, route):
    key = new_key("acme", world.A if scope == "pod" else None, LIMITED)
    path = world.path(route)
    before = state()
    assert_forbidden(call(client, "PATCH", path, key, {"permissions": {"pod_delete": True}}), "pod_delete")
    assert_forbidden(call(client, "PATCH", path, key, {"name": "x", "permissions": {"pod_create": True}}),
                     "pod_create")
    assert state() == before
    # Only the permissions being set count: a name alone, or null, changes no permission.
    r = call(client, "PATCH", path, key, {"name": "renamed", "permissions": None})
    assert r.status_code == 200 and "permissions" not in r.json  # still every permission
    r = call(client, "PATCH", path, key, {"permissions": {"pod_read": True}})
    assert r.status_code == 200 and r.json["permissions"] == {"pod_read": True}


def test_a_key_cannot_patch_itself_more_permissions_but_may_drop_some(client, world, new_key):
    key = new_key("acme", world.A, LIMITED)
    mine = f"/api-keys/{key.key_id}"
    more = {"permissions": {"pod_delete": True, **dict.fromkeys(LIMITED, True)}}
    assert_forbidden(call(client, "PATCH", mine, key, more), "pod_delete")
    assert call(client, "GET", "/pods", key).status_code == 200
    r = call(client, "PATCH", mine, key, {"permissions": {"api_key_read": True}})
    assert r.status_code == 200 and r.json["permissions"] == {"api_key_read": True}
    # From its very next request on.
    assert_forbidden(call(client, "GET", "/pods", key), "pod_read")
    assert_forbidden(call(client, "PATCH", mine, key, {"permissions": {"api_key_read": True}}), "api_key_update")


@pytest.mark.parametrize("scope,route", [("org", "/api-keys"), ("org", "/pods/{A}/api-keys"),
                                         ("pod", "/pods/{A}/api-keys")])
def test_a_key_cannot_create_a_key_that_outlives_it(client, world, new_key, state, sql, scope, route):
    own = at(timedelta(hours=1))
    stored_own = datetime.fromisoformat(own).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    key = new_key("acme", world.A if scope == "pod" else None, None, stored_own)
    path = world.path(route)
    before = state()
    for later in (at(timedelta(hours=2)), (datetime.fromisoformat(own) + timedelta(microseconds=1)).isoformat()):
        assert_forbidden(call(client, "POST", path, key, {"expires_at": later}), "expires")
    assert state() == before
    # Omitted or null: the new key expires when its maker does.
    for body in ({}, {"expires_at": None}):
        made = call(client, "POST", path, key, body).json
        assert made["expires_at"] == stored_own
    # At or before its own expiry: granted as asked.
    assert call(client, "POST", path, key, {"expires_at": own}).json["expires_at"] == stored_own
    sooner = at(timedelta(minutes=5))
    made = call(client, "POST", path, key, {"expires_at": sooner}).json
    assert datetime.fromisoformat(made["expires_at"]) == datetime.fromisoformat(sooner)
    assert key_count(sql) == len(before[0]) + 4


def test_an_expiring_key_cannot_add_permissions_to_a_key_that_outlives_it(client, world, new_key, state):
    own = stored_time(timedelta(hours=1))
    caller = new_key("acme", None, ["api_key_update", "pod_read", "pod_delete"], own)
    forever = new_key("acme", None, ["pod_read"], None, "forever")
    later = new_key("acme", None, ["pod_read"], stored_time(timedelta(hours=2)), "later")
    before = state()
    for target in (forever, later):
        r = call(client, "PATCH", f"/api-keys/{target.key_id}", caller,
                 {"permissions": {"pod_read": True, "pod_delete": True}})
        assert_forbidden(r, f"expires at {own}", "it would add pod_delete")
    assert state() == before
    # Removing permissions, or renaming, from such a key is fine.
    r = call(client, "PATCH", f"/api-keys/{forever.key_id}", caller, {"permissions": {}, "name": "narrowed"})
    assert r.status_code == 200 and r.json["permissions"] == {} and r.json["name"] == "narrowed"
    # A key that expires no later than the caller may be given what the caller has.
    sooner = new_key("acme", None, [], stored_time(timedelta(minutes=30)))
    r = call(client, "PATCH", f"/api-keys/{sooner.key_id}", caller, {"permissions": {"pod_delete": True}})
    assert r.status_code == 200 and r.json["permissions"] == {"pod_delete": True}
    assert call(client, "DELETE", f"/pods/{world.B}", sooner).status_code == 200


def test_a_regrant_is_checked_against_the_key_as_the_update_finds_it(app, client, world, new_key, sql, monkeypatch):
    """Another client narrows the key between the caller's read and its update: what
    was a no-op on the key as read would add a permission to the key as it is."""
    own = stored_time(timedelta(hours=1))
    caller = new_key("acme", None, ["api_key_update", "pod_read", "pod_delete"], own)
    target = new_key("acme", None, ["pod_read", "pod_delete"], None, "forever")
    storage = storage_of(app)
    read = storage.find_key

    def read_then_narrowed(org_id, key_id):
        row = read(org_id, key_id)
        storage.update_key(org_id, key_id, None, stored_permissions(frozenset({"pod_read"})), True)
        return row

    monkeypatch.setattr(storage, "find_key", read_then_narrowed)
    r = call(client, "PATCH", f"/api-keys/{target.key_id}", caller,
             {"permissions": {"pod_read": True, "pod_delete": True}, "name": "widened"})
    assert_forbidden(r, f"expires at {own}", "it would add pod_delete")
    assert sql("SELECT name, permissions FROM api_key WHERE key_id = ?", (target.key_id,)) == [
        ("forever", stored_permissions(frozenset({"pod_read"})))]


def test_a_key_that_never_expires_may_grant_any_future_expiry(client, world):
    far = "2999-01-01T00:00:00+02:00"
    made = call(client, "POST", "/api-keys", world.root, {"expires_at": far}).json
    assert made["expires_at"] == "2998-12-31T22:00:00.000000Z"
    assert "expires_at" not in call(client, "POST", "/api-keys", world.root).json


def test_a_pod_key_cannot_create_an_organization_key(client, world, state):
    before = state()
    for body in ({}, {"permissions": {"pod_read": True}}):
        assert_forbidden(call(client, "POST", "/api-keys", world.pod_key, body), f"scoped to pod {world.A}")
    assert state() == before


@pytest.mark.parametrize("who,pod", [("pod", "B"), ("other", "A"), ("other", "B"), ("org", "G")])
def test_no_key_creates_a_key_for_a_pod_outside_its_scope(client, world, state, who, pod):
    before = state()
    r = call(client, "POST", f"/pods/{getattr(world, pod)}/api-keys", world.caller(who), {"permissions": {}})
    assert (r.status_code, r.json) == (404, POD_NOT_FOUND)
    assert state() == before


# -- validation --------------------------------------------------------------------------------

BAD_CREATE = [
    ({"name": ""}, "name"), ({"name": "x" * 256}, "name"), ({"name": "a\nb"}, "name"), ({"name": "\x7f"}, "name"),
    ({"name": "tab\there"}, "name"), ({"name": 5}, "name"), ({"name": True}, "name"), ({"name": ["n"]}, "name"),
    ({"permissions": []}, "permissions"), ({"permissions": "pod_read"}, "permissions"),
    ({"permissions": True}, "permissions"), ({"permissions": {"pod_read": "true"}}, "permissions"),
    ({"permissions": {"pod_read": 1}}, "permissions"), ({"permissions": {"pod_read": {}}}, "permissions"),
    ({"permissions": {"pod_admin": True}}, "permissions"), ({"permissions": {"Pod_Read": True}}, "permissions"),
    ({"permissions": {"pod_read ": True}}, "permissions"),
    ({"permissions": {"pod_read": True, "x": False}}, "permissions"),
    ({"expires_at": ""}, "expires_at"), ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": "2999-01-01"}, "expires_at"), ({"expires_at": "2999-01-01T00:00:00"}, "expires_at"),
    ({"expires_at": "2000-01-01T00:00:00Z"}, "expires_at"), ({"expires_at": "2999-02-30T00:00:00Z"}, "expires_at"),
    ({"expires_at": 32503680000}, "expires_at"), ({"expires_at": True}, "expires_at"),
    ({"public_key": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}, "public_key"),
    ({"public_key": "-----BEGIN PUBLIC KEY-----"}, "public_key"), ({"public_key": {}}, "public_key"),
    ({"colour": "red"}, "colour"), ({"pod_id": "x"}, "pod_id"), ({"api_key": "pods_mine"}, "api_key"),
    ({"type": "bearer"}, "type"), ({"inbox_id": "i"}, "inbox_id"), ({"client_id": "c"}, "client_id"),
]


@pytest.mark.parametrize("route", ["/api-keys", "/pods/{A}/api-keys"])
@pytest.mark.parametrize("body,field", BAD_CREATE)
def test_a_bad_create_body_is_400_naming_the_field_and_creates_nothing(client, world, state, route, body, field):
    before = state()
    r = call(client, "POST", world.path(route), world.root, body)
    assert r.status_code == 400, r.json
    assert (r.json["name"], r.json["code"]) == ("ValidationError", "validation_error")
    assert set(r.json["errors"]) == {field}
    assert state() == before


def test_every_offending_field_is_named_at_once(client, world, state):
    before = state()
    body = {"name": "", "permissions": {"nope": True}, "expires_at": "soon", "public_key": {}, "colour": 1}
    r = call(client, "POST", "/api-keys", world.root, body)
    assert r.status_code == 400
    assert set(r.json["errors"]) == set(body)
    assert r.json["errors"]["permissions"] == ["nope: Unknown field."]  # the unknown permission name itself
    assert state() == before


def test_an_expiry_past_the_last_utc_time_is_400(client, world, state):
    before = state()
    r = call(client, "POST", "/api-keys", world.root, {"expires_at": "9999-12-31T23:59:59-23:59"})
    assert (r.status_code, set(r.json["errors"])) == (400, {"expires_at"})
    assert state() == before


BAD_PATCH = [
    ({"expires_at": at(timedelta(days=1))}, "expires_at"), ({"expires_at": None}, "expires_at"),
    ({"public_key": {"kty": "EC"}}, "public_key"), ({"pod_id": "x"}, "pod_id"), ({"type": "bearer"}, "type"),
    ({"api_key_id": "x"}, "api_key_id"), ({"prefix": "pods_"}, "prefix"), ({"created_at": "x"}, "created_at"),
] + [(body, field) for body, field in BAD_CREATE if field in ("name", "permissions")]


@pytest.mark.parametrize("route", ["/api-keys/{a_key}", "/pods/{A}/api-keys/{a_key}"])
@pytest.mark.parametrize("body,field", BAD_PATCH)
def test_a_bad_patch_body_is_400_naming_the_field_and_changes_nothing(client, world, state, route, body, field):
    before = state()
    r = call(client, "PATCH", world.path(route), world.root, body)
    assert r.status_code == 400, r.json
    assert set(r.json["errors"]) == {field}
    assert state() == before


@pytest.mark.parametrize("method,route", [("POST", "/api-keys"), ("POST", "/pods/{A}/api-keys"),
                                          ("PATCH", "/api-keys/{a_key}"), ("PATCH", "/pods/{A}/api-keys/{a_key}")])
@pytest.mark.parametrize("data,content_type,status,name", [
    (b"[]", "application/json", 400, "ValidationError"),
    (b'"name"', "application/json", 400, "ValidationError"),
    (b"{", "application/json", 400, "ValidationError"),
    (b'{"name": "a", "name": "b"}', "application/json", 400, "ValidationError"),
    (b'{"name": "\\ud800"}', "application/json", 400, "ValidationError"),
    (b'{"name": "x"}', "text/plain", 415, "UnsupportedMediaTypeError"),
    (b'{"name": "x"}', "application/x-www-form-urlencoded", 415, "UnsupportedMediaTypeError"),
    (b'{"name": "' + b"x" * (64 * 1024) + b'"}', "application/json", 413, "PayloadTooLargeError"),
], ids=["array", "string", "truncated", "duplicate-key", "lone-surrogate", "text", "form", "too-large"])
def test_bodies_follow_the_pod_rules(client, world, state, method, route, data, content_type, status, name):
    before = state()
    r = call(client, method, world.path(route), world.root, data=data, content_type=content_type)
    assert (r.status_code, r.json["name"]) == (status, name)
    assert state() == before


@pytest.mark.parametrize("method,route", [("POST", "/api-keys"), ("PATCH", "/api-keys/{a_key}")])
def test_an_empty_body_is_an_empty_object(client, world, method, route):
    r = call(client, method, world.path(route), world.root, data=b"")
    assert r.status_code == 200 and r.json["name"]


def test_patch_renames_and_replaces_the_whole_permissions_object(client, world):
    path = f"/api-keys/{world.a_key}"
    before = call(client, "GET", path, world.root).json
    time.sleep(0.002)
    r = call(client, "PATCH", path, world.root, {"permissions": {"pod_read": True, "pod_create": True}})
    assert r.status_code == 200 and r.json["permissions"] == {"pod_read": True, "pod_create": True}
    assert r.json["updated_at"] > before["updated_at"] and r.json["created_at"] == before["created_at"]
    r = call(client, "PATCH", path, world.root, {"permissions": {"pod_delete": True}})
    assert r.json["permissions"] == {"pod_delete": True}  # replaced, not merged
    r = call(client, "PATCH", path, world.root, {"name": "renamed"})
    assert (r.json["name"], r.json["permissions"]) == ("renamed", {"pod_delete": True})
    r = call(client, "PATCH", path, world.root, {"name": None, "permissions": None})
    assert (r.json["name"], r.json["permissions"]) == ("renamed", {"pod_delete": True})
    assert call(client, "GET", path, world.root).json == r.json
    assert {k: r.json[k] for k in ("pod_id", "prefix", "api_key_id")} == {
        k: before[k] for k in ("pod_id", "prefix", "api_key_id")}


# -- the order of the checks ------------------------------------------------------------------------

TOO_LARGE = b'{"permissions": {"pod_delete": true}, "name": "' + b"x" * (64 * 1024) + b'"}'
ESCALATING = b'{"permissions": {"pod_delete": true}}'


@pytest.mark.parametrize("who,method,path,data,content_type,status,words", [
    # 401 first: before any permission, scope or body.
    ("nobody", "POST", "/pods/no-such-pod/api-keys", TOO_LARGE, "application/json", 401, ()),
    ("stranger", "PATCH", "/api-keys/0123456789abcdef", b"{", "text/plain", 401, ()),
    # The endpoint's permission before scope and body.
    ("no_create", "POST", "/pods/no-such-pod/api-keys", TOO_LARGE, "application/json", 403, ("api_key_create",)),
    ("no_create", "POST", "/api-keys", b"{", "text/plain", 403, ("api_key_create",)),
    ("no_read", "GET", "/api-keys/0123456789abcdef", None, None, 403, ("api_key_read",)),
    ("pod_no_update", "PATCH", "/pods/{B}/api-keys/{b_key}", b'{"colour": 1}', "application/json", 403,
     ("api_key_update",)),
    ("pod_no_read", "GET", "/pods/{B}", None, None, 403, ("pod_read",)),
    ("pod_no_create", "POST", "/pods", b'{"colour": 1}', "application/json", 403, ("pod_create",)),
    ("pod_no_create", "POST", "/api-keys", b"{}", "application/json", 403, ("api_key_create",)),
    # Scope (404) before the body.
    ("pod", "POST", "/pods/{B}/api-keys", TOO_LARGE, "application/json", 404, ()),
    ("pod", "PATCH", "/api-keys/{org_key}", b"{}", "text/plain", 404, ()),
    ("pod", "PATCH", "/pods/{A}/api-keys/{b_key}", b'{"colour": 1}', "application/json", 404, ()),
    ("org", "POST", "/pods/no-such-pod/api-keys", b"{", "application/json", 404, ()),
    ("other", "PATCH", "/pods/{A}/api-keys/{a_key}", TOO_LARGE, "application/json", 404, ()),
    # The body before escalation; 413 before 415 before 400.
    ("limited", "POST", "/api-keys", TOO_LARGE, "text/plain", 413, ()),
    ("limited", "POST", "/pods/{A}/api-keys", ESCALATING, "text/plain", 415, ()),
    ("limited", "POST", "/api-keys", b'{"permissions": {"pod_delete": true}, "colour": 1}', "application/json",
     400, ()),
    ("limited", "PATCH", "/api-keys/{a_key}", b'{"permissions": {"pod_delete": true}, "name": ""}',
     "application/json", 400, ()),
    ("expiring", "POST", "/api-keys", b'{"expires_at": "2999-01-01T00:00:00Z", "name": 7}', "application/json",
     400, ()),
    # Escalation last.
    ("limited", "POST", "/pods/{A}/api-keys", ESCALATING, "application/json", 403, ("pod_delete",)),
    ("expiring", "POST", "/api-keys", b'{"expires_at": "2999-01-01T00:00:00Z"}', "application/json", 403,
     ("expires",)),
])
def test_checks_run_in_the_contracts_order(client, world, new_key, state, who, method, path, data, content_type,
                                           status, words):
    keys = {
        "nobody": None, "stranger": Key("pods_" + "x" * 43, "-"), "org": world.root, "pod": world.pod_key,
        "other": world.other,
        "no_create": new_key("acme", None, but("api_key_create")),
        "no_read": new_key("acme", None, but("api_key_read")),
        "pod_no_update": new_key("acme", world.A, but("api_key_update")),
        "pod_no_read": new_key("acme", world.A, but("pod_read")),
        "pod_no_create": new_key("acme", world.A, but("pod_create", "api_key_create")),
        "limited": new_key("acme", None, LIMITED),
        "expiring": new_key("acme", None, None, stored_time(timedelta(hours=1))),
    }
    before = state()
    kwargs = {} if data is None else {"data": data, "content_type": content_type}
    r = call(client, method, world.path(path), keys[who], **kwargs)
    assert r.status_code == status, r.json
    if status == 403:
        assert_forbidden(r, *words)
    assert state() == before


# -- paging -------------------------------------------------------------------------------------------


def walk(client, key, path, **params):
    """Every page of a key list, following next_page_token; returns (keys, pages)."""
    seen, pages, query = [], [], dict(params)
    while True:
        r = call(client, "GET", path, key, query_string=query)
        assert r.status_code == 200, r.json
        page = r.json
        assert page["count"] == len(page["api_keys"]) and page["limit"] == params.get("limit", 10)
        pages.append(page)
        seen += page["api_keys"]
        if "next_page_token" not in page:
            return seen, pages
        query = {**params, "page_token": page["next_page_token"]}


@pytest.fixture
def six(client, world):
    """Six keys of pod A made over the API, and the two the world gave it: newest first."""
    for i in range(6):
        assert call(client, "POST", f"/pods/{world.A}/api-keys", world.root, {"name": f"k{i}"}).status_code == 200
    rows = call(client, "GET", f"/pods/{world.A}/api-keys", world.root, query_string={"limit": 100}).json["api_keys"]
    assert len(rows) == 8
    return rows


def test_a_key_list_pages_newest_first_and_reverses(client, world, six):
    order = sorted(six, key=lambda k: (k["created_at"], k["api_key_id"]), reverse=True)
    assert six == order
    assert [k["name"] for k in six[:6]] == [f"k{i}" for i in reversed(range(6))]
    seen, pages = walk(client, world.root, f"/pods/{world.A}/api-keys", limit=3)
    assert seen == order and [p["count"] for p in pages] == [3, 3, 2]
    seen, pages = walk(client, world.root, f"/pods/{world.A}/api-keys", limit=4, ascending="true")
    assert seen == order[::-1] and [p["count"] for p in pages] == [4, 4]  # a full last page has no token
    assert walk(client, world.pod_key, "/api-keys", limit=5)[0] == order  # what pod A's key sees as its keys
    everyone, _ = walk(client, world.root, "/api-keys", limit=2, type="bearer")
    assert len(everyone) == 5 + 6 and {k["api_key_id"] for k in six} < {k["api_key_id"] for k in everyone}
    assert call(client, "GET", "/api-keys", world.root).json["limit"] == 10


@pytest.mark.parametrize("route", ["/api-keys", "/pods/{A}/api-keys"])
def test_type_public_key_lists_none_and_other_types_are_400(client, world, route):
    path = world.path(route)
    r = call(client, "GET", path, world.root, query_string={"type": "public_key", "limit": 3})
    assert (r.status_code, r.json) == (200, {"count": 0, "limit": 3, "api_keys": []})
    assert call(client, "GET", path, world.root, query_string={"type": "bearer"}).json["count"] >= 2
    for bad in ("", "Bearer", "BEARER", "public", "bearer,public_key", "oauth"):
        r = call(client, "GET", path, world.root, query_string={"type": bad})
        assert (r.status_code, set(r.json["errors"])) == (400, {"type"}), bad


@pytest.mark.parametrize("query,parameter", [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "ten"}, "limit"), ({"limit": "-1"}, "limit"),
    ({"ascending": "yes"}, "ascending"), ({"page_token": "garbage"}, "page_token"), ({"page_token": ""}, "page_token"),
])
@pytest.mark.parametrize("route", ["/api-keys", "/pods/{A}/api-keys"])
def test_bad_list_parameters_are_400_naming_them(client, world, route, query, parameter):
    r = call(client, "GET", world.path(route), world.root, query_string=query)
    assert r.status_code == 400 and set(r.json["errors"]) == {parameter}


def test_a_list_parameter_given_twice_is_400(client, world):
    for name, values in (("type", ("bearer", "public_key")), ("limit", ("5", "5"))):
        r = call(client, "GET", "/api-keys", world.root, query_string=[(name, v) for v in values])
        assert (r.status_code, set(r.json["errors"])) == (400, {name})


def test_a_page_token_from_another_list_is_400(client, world, six, new_key):
    def token(key, path, **params):
        return call(client, "GET", path, key, query_string={"limit": 1, **params}).json["next_page_token"]

    org_keys = token(world.root, "/api-keys")
    pod_a_keys = token(world.root, f"/pods/{world.A}/api-keys")
    pods = token(world.root, "/pods")
    pod_b = call(client, "POST", f"/pods/{world.B}/api-keys", world.root).json  # B now holds two keys
    pod_b_keys = token(world.root, f"/pods/{world.B}/api-keys")
    globex_keys = token(world.other, "/api-keys")
    assert pod_b["pod_id"] == world.B
    cases = [
        (world.root, f"/pods/{world.A}/api-keys", org_keys, {}),
        (world.root, "/api-keys", pod_a_keys, {}),
        (world.root, f"/pods/{world.B}/api-keys", pod_a_keys, {}),
        (world.root, f"/pods/{world.A}/api-keys", pod_b_keys, {}),
        (world.root, "/api-keys", pods, {}),
        (world.root, "/pods", org_keys, {}),
        (world.root, "/pods", pod_a_keys, {}),
        (world.root, "/api-keys", globex_keys, {}),
        (world.other, "/api-keys", org_keys, {}),
        (world.pod_key, "/pods", pods, {}),  # the organization's pod list is not pod A's
        (world.root, "/api-keys", org_keys, {"ascending": "true"}),  # issued for the other direction
    ]
    for key, path, page_token, extra in cases:
        r = call(client, "GET", path, key, query_string={"page_token": page_token, **extra})
        assert (r.status_code, set(r.json.get("errors", {}))) == (400, {"page_token"}), (path, extra)
    # Each token still works on its own list.
    assert call(client, "GET", "/api-keys", world.root, query_string={"page_token": org_keys}).status_code == 200


# -- lifetime: expiry, deletion, revocation ------------------------------------------------------------


def test_an_expired_key_is_401_and_stays_listed_with_its_expiry(client, world, new_key):
    past = "2020-01-01T00:00:00.000000Z"  # stored directly: the API refuses a past expiry
    expired = new_key("acme", world.A, ["pod_read"], past, name="expired")
    assert_unauthorized(call(client, "GET", "/pods", expired))
    listed = call(client, "GET", f"/pods/{world.A}/api-keys", world.root).json["api_keys"]
    mine = [k for k in listed if k["api_key_id"] == expired.key_id]
    assert len(mine) == 1 and mine[0]["expires_at"] == past and mine[0]["name"] == "expired"
    assert call(client, "GET", f"/api-keys/{expired.key_id}", world.root).json == mine[0]
    assert call(client, "DELETE", f"/api-keys/{expired.key_id}", world.root).status_code == 200
    assert expired.key_id not in str(call(client, "GET", "/api-keys", world.root, query_string={"limit": 100}).json)


@pytest.mark.parametrize("route", ["/api-keys/{key_id}", "/pods/{A}/api-keys/{key_id}"])
def test_a_key_can_delete_itself_and_is_401_on_its_next_request(client, world, route):
    path = route.format(key_id=world.pod_key.key_id, A=world.A)
    r = call(client, "DELETE", path, world.pod_key)
    assert (r.status_code, r.get_data()) == (200, b"")
    assert_unauthorized(call(client, "GET", "/pods", world.pod_key))
    assert (call(client, "GET", path.replace(f"/pods/{world.A}", ""), world.root).json) == KEY_NOT_FOUND


def test_a_deleted_key_is_gone_from_the_api(client, world, sql):
    path = f"/pods/{world.A}/api-keys/{world.a_key}"
    assert call(client, "DELETE", path, world.root).status_code == 200
    for method, p in (("GET", f"/api-keys/{world.a_key}"), ("PATCH", f"/api-keys/{world.a_key}"),
                      ("DELETE", path), ("DELETE", f"/api-keys/{world.a_key}"), ("PATCH", path)):
        r = call(client, method, p, world.root, {} if method == "PATCH" else None)
        assert (r.status_code, r.json) == (404, KEY_NOT_FOUND), (method, p)
    listed = call(client, "GET", "/api-keys", world.root, query_string={"limit": 100}).json["api_keys"]
    assert world.a_key not in {k["api_key_id"] for k in listed}


def test_a_key_revoked_from_the_cli_is_deleted_as_far_as_the_api_knows(app, client, world, sql):
    result = CliRunner().invoke(cli, ["keys", "revoke", world.pod_key.key_id, "--db", app.config["DB"]])
    assert result.exit_code == 0, result.output
    assert_unauthorized(call(client, "GET", f"/pods/{world.A}", world.pod_key))
    r = call(client, "GET", f"/api-keys/{world.pod_key.key_id}", world.root)
    assert (r.status_code, r.json) == (404, KEY_NOT_FOUND)
    for path in ("/api-keys", f"/pods/{world.A}/api-keys"):
        listed = call(client, "GET", path, world.root, query_string={"limit": 100}).json["api_keys"]
        assert world.pod_key.key_id not in {k["api_key_id"] for k in listed}
    for method, path in (("PATCH", f"/api-keys/{world.pod_key.key_id}"),
                         ("DELETE", f"/pods/{world.A}/api-keys/{world.pod_key.key_id}")):
        assert call(client, method, path, world.root, {} if method == "PATCH" else None).status_code == 404


@pytest.mark.parametrize("who", ["org", "pod"])
def test_deleting_a_pod_deletes_its_keys_at_once(client, world, sql, who):
    assert call(client, "DELETE", f"/pods/{world.A}", world.caller(who)).status_code == 200
    assert sql("SELECT count(*) FROM api_key WHERE pod_id = ?", (world.A,)) == [(0,)]
    assert_unauthorized(call(client, "GET", "/pods", world.pod_key))
    r = call(client, "GET", f"/api-keys/{world.a_key}", world.root)
    assert (r.status_code, r.json) == (404, KEY_NOT_FOUND)
    # The other pod's and the organization's keys are untouched.
    listed = call(client, "GET", "/api-keys", world.root, query_string={"limit": 100}).json["api_keys"]
    assert {k["api_key_id"] for k in listed} == {world.root.key_id, world.org_key, world.b_key}


REFUSE_POD_DELETES = {
    "sqlite": ["CREATE TRIGGER refuse BEFORE DELETE ON pod BEGIN SELECT RAISE(ABORT, 'refused'); END"],
    "postgres": ["CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'refused'; END $$",
                 "CREATE TRIGGER refuse BEFORE DELETE ON pod FOR EACH ROW EXECUTE FUNCTION refuse()"],
}


def test_a_pod_and_its_keys_are_deleted_in_one_transaction(app, client, world, sql, state, backend):
    """When the pod's own deletion fails, its keys are not deleted either."""
    for statement in REFUSE_POD_DELETES[backend]:
        query(app.config["DB"], statement)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # answered as a client would see it
    before = state()
    r = call(client, "DELETE", f"/pods/{world.A}", world.root)
    assert r.status_code == 500 and r.json["name"] == "InternalServerError"
    assert state() == before
    assert call(client, "GET", f"/pods/{world.A}", world.pod_key).status_code == 200
    query(app.config["DB"], "DROP TRIGGER refuse" + (" ON pod" if backend == "postgres" else ""))
    assert call(client, "DELETE", f"/pods/{world.A}", world.pod_key).status_code == 200
    assert sql("SELECT count(*) FROM api_key WHERE pod_id = ?", (world.A,)) == [(0,)]


def test_a_pod_deleted_meanwhile_makes_no_key(app, client, world, state, monkeypatch):
    """The pod is looked up (with the key), then deleted by another request, then the
    key is stored: the store refuses, and the answer is 404, as for any pod that does
    not exist."""
    storage = storage_of(app)
    caller_for_key_hash = storage.caller_for_key_hash

    def found_then_deleted(key_hash, pod_id=None):
        row = caller_for_key_hash(key_hash, pod_id)
        assert row["path_pod_id"] == pod_id
        storage.delete_pod(row["org_id"], pod_id)
        return row

    monkeypatch.setattr(storage, "caller_for_key_hash", found_then_deleted)
    r = call(client, "POST", f"/pods/{world.B}/api-keys", world.root, {"name": "late"})
    assert (r.status_code, r.json) == (404, POD_NOT_FOUND)
    monkeypatch.undo()
    assert all(row[2] != world.B for row in state()[0])


# -- used_at ------------------------------------------------------------------------------------------------


def recording_app(database, flush_seconds):
    return create_app({"TESTING": True, "DB": database, "KEY_USE_FLUSH_SECONDS": flush_seconds})


def test_used_at_appears_after_a_use(database):
    app = recording_app(database, 0.2)
    try:
        client, storage = app.test_client(), storage_of(app)
        tokens = [new_token() for _ in range(2)]
        root, used = (Key(t, storage.insert_api_key("acme", hash_key(t), token_prefix(t))["key_id"]) for t in tokens)
        start = datetime.now(UTC)
        assert "used_at" not in call(client, "GET", f"/api-keys/{used.key_id}", root).json
        assert call(client, "GET", "/pods", used).status_code == 200
        deadline = time.monotonic() + 30
        while "used_at" not in (got := call(client, "GET", f"/api-keys/{used.key_id}", root).json):
            assert time.monotonic() < deadline, "used_at never appeared"
            time.sleep(0.05)
        used_at = datetime.fromisoformat(got["used_at"])
        assert start <= used_at <= datetime.now(UTC)
        assert got["used_at"].endswith("Z") and len(got["used_at"]) == len(got["created_at"])
        assert call(client, "GET", f"/api-keys/{used.key_id}", root).json["updated_at"] == got["created_at"]
    finally:
        close_app(app)


def test_many_requests_make_a_bounded_number_of_writes(database, monkeypatch):
    app = recording_app(database, 3600)  # written only when the test says so (flush)
    recorder, storage = app.extensions[keyuse.EXTENSION_KEY], storage_of(app)
    writes = []
    record = storage.record_key_use
    monkeypatch.setattr(storage, "record_key_use", lambda used: (writes.append(dict(used)), record(used)))
    try:
        client = app.test_client()
        tokens = [new_token() for _ in range(5)]
        keys = [Key(t, storage.insert_api_key("acme", hash_key(t), token_prefix(t))["key_id"]) for t in tokens]
        for _ in range(40):
            for key in keys:
                assert call(client, "GET", "/pods", key).status_code == 200
        assert writes == []  # none from the 200 requests themselves
        recorder.flush()
        assert len(writes) == 1 and set(writes[0]) == {k.key_id for k in keys}
        for _ in range(40):
            for key in keys:
                assert call(client, "GET", "/api-keys", key).status_code == 200
        recorder.flush()
        assert len(writes) == 1  # used within the last minute already: nothing to write
        assert all("used_at" in call(client, "GET", f"/api-keys/{k.key_id}", keys[0]).json for k in keys)
    finally:
        close_app(app)


def test_a_failing_use_record_fails_no_request(database, monkeypatch):
    app = recording_app(database, 3600)
    storage = storage_of(app)

    def unavailable(used):
        raise storage.unavailable[0]("database is locked")

    monkeypatch.setattr(storage, "record_key_use", unavailable)
    try:
        client = app.test_client()
        token = new_token()
        key = Key(token, storage.insert_api_key("acme", hash_key(token), token_prefix(token))["key_id"])
        assert call(client, "GET", "/pods", key).status_code == 200
        app.extensions[keyuse.EXTENSION_KEY].flush()  # logged, not raised
        assert call(client, "GET", "/pods", key).status_code == 200
    finally:
        close_app(app)


@pytest.mark.parametrize("value", ["2030-W01-1T00:00:00Z", "20300101T000000Z", "2030-01-01T00Z",
                                   "2030-01-01T00:00:00+0000", "2030-01-01 00:00:00Z", "2030-01-01T00:00:00"])
def test_an_expiry_is_rfc_3339_only(client, world, state, value):
    before = state()
    r = call(client, "POST", "/api-keys", world.root, {"expires_at": value})
    assert (r.status_code, set(r.json["errors"])) == (400, {"expires_at"})
    assert state() == before


def test_lowercase_t_and_z_are_rfc_3339_too(client, world):
    r = call(client, "POST", "/api-keys", world.root, {"expires_at": "2099-01-01t00:00:00.5z"})
    assert r.status_code == 200 and r.json["expires_at"] == "2099-01-01T00:00:00.500000Z"


def test_a_missing_permission_403_asks_for_no_credentials(client, world, new_key):
    key = new_key("acme", permissions=but("pod_read"))
    r = call(client, "GET", "/pods", key)
    assert r.status_code == 403 and "WWW-Authenticate" not in r.headers


@pytest.mark.parametrize("body", [{}, {"name": None, "permissions": None}, {"name": "a"}])
def test_a_patch_that_changes_nothing_leaves_updated_at(client, world, body):
    before = call(client, "GET", f"/api-keys/{world.a_key}", world.root).json
    after = call(client, "PATCH", f"/api-keys/{world.a_key}", world.root, body).json
    assert after == before  # the key named "a" is already named "a"
    changed = call(client, "PATCH", f"/api-keys/{world.a_key}", world.root, {"name": "renamed"}).json
    assert changed["updated_at"] > before["updated_at"] and changed["name"] == "renamed"
