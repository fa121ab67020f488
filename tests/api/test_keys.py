"""API keys over the API, in-process: what each key endpoint answers, which key
may do what (the scope and permission matrices), no escalation, validation, the
order of the checks, paging, used_at, and what pod deletion and the CLI do to
keys. Real servers (the SDK, two workers, expiry by the clock): test_keys_live.py."""

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from helpers import storage_of, wait_until
from dbtools import query
from pods import close_app, create_app
from pods.api import keyuse
from pods.api.permissions import stored_permissions
from pods.api.auth import hash_key, new_token, token_prefix
from pods.cli import cli

from keyworld import (  # the shared fixtures, by name, so that pytest finds them here
    app,
    new_key,
    postgres_schema,
    state,
    world,
    world_template,
)
from keyworld import (
    CREATED_FIELDS,
    ESCALATION,
    KEY_FIELDS,
    KEY_NOT_FOUND,
    LIMITED,
    POD_NOT_FOUND,
    SDK_PERMISSIONS,
    assert_forbidden,
    assert_unauthorized,
    at,
    but,
    call,
    Key,
    stored_time,
)


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
    assert r.json == {"name": "MethodNotAllowedError", "code": "method_not_allowed", "message": "Method not allowed.",
                      "fix": "Use one of the methods this answer's Allow header lists for this path."}
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


# -- no escalation --------------------------------------------------------------------------



def key_count(sql) -> int:
    return sql("SELECT count(*) FROM api_key")[0][0]


@pytest.mark.parametrize("scope,route", [("org", "/api-keys"), ("org", "/pods/{A}/api-keys"),
                                         ("pod", "/pods/{A}/api-keys")])
def test_a_key_cannot_create_a_key_with_a_permission_it_lacks(client, world, new_key, state, sql, scope, route):
    key = new_key("acme", world.A if scope == "pod" else None, LIMITED)
    path = world.path(route)
    before = state()
    assert_forbidden(call(client, "POST", path, key, {"permissions": {"pod_read": True, "pod_delete": True}}),
                     "pod_delete", code=ESCALATION)
    assert state() == before

    granted = {"pod_read": True, "inbox_read": True}
    r = call(client, "POST", path, key, {"permissions": {**granted, "pod_delete": False, "pod_create": None}})
    assert r.status_code == 200 and r.json["permissions"] == granted
    # Absent or null: not every permission (this key lacks some), but the key's own.
    for own in ({}, {"permissions": None}, {"name": "all"}):
        r = call(client, "POST", path, key, own)
        assert r.status_code == 200 and r.json["permissions"] == dict.fromkeys(LIMITED, True), r.json
    assert key_count(sql) == len(before[0]) + 4


@pytest.mark.parametrize("scope,route", [("org", "/api-keys/{a_key}"), ("org", "/pods/{A}/api-keys/{a_key}"),
                                         ("pod", "/pods/{A}/api-keys/{a_key}"), ("pod", "/api-keys/{a_key}")])
def test_a_key_cannot_patch_in_a_permission_it_lacks(client, world, new_key, state, scope, route):
    key = new_key("acme", world.A if scope == "pod" else None, LIMITED)
    path = world.path(route)
    before = state()
    assert_forbidden(call(client, "PATCH", path, key, {"permissions": {"pod_delete": True}}), "pod_delete",
                     code=ESCALATION)
    assert_forbidden(call(client, "PATCH", path, key, {"name": "x", "permissions": {"pod_create": True}}),
                     "pod_create", code=ESCALATION)
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
    assert_forbidden(call(client, "PATCH", mine, key, more), "pod_delete", code=ESCALATION)
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
        assert_forbidden(call(client, "POST", path, key, {"expires_at": later}), "expires", code=ESCALATION)
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
        assert_forbidden(r, f"expires at {own}", "it would add pod_delete", code=ESCALATION)
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
    assert_forbidden(r, f"expires at {own}", "it would add pod_delete", code=ESCALATION)
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
        assert_forbidden(call(client, "POST", "/api-keys", world.pod_key, body), f"scoped to pod {world.A}",
                         code="forbidden")
    assert state() == before


@pytest.mark.parametrize("who,pod", [("pod", "B"), ("other", "A"), ("other", "B"), ("org", "G")])
def test_no_key_creates_a_key_for_a_pod_outside_its_scope(client, world, state, who, pod):
    before = state()
    r = call(client, "POST", f"/pods/{getattr(world, pod)}/api-keys", world.caller(who), {"permissions": {}})
    assert (r.status_code, r.json) == (404, POD_NOT_FOUND)
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

        def shown_with_used_at():
            shown = call(client, "GET", f"/api-keys/{used.key_id}", root).json
            return shown if "used_at" in shown else None

        got = wait_until(shown_with_used_at, timeout=30)
        assert got, "used_at never appeared"
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
