"""Which key may do what, in-process: the scope matrix (organization key, pod key,
another organization) and the permission matrix (each gating permission, each endpoint)."""

import re

import pytest


from keyworld import (  # the shared fixtures, by name, so that pytest finds them here
    app,
    new_key,
    postgres_schema,
    state,
    world,
    world_template,
)
from keyworld import (
    GATING,
    KEY_NOT_FOUND,
    POD_NOT_FOUND,
    assert_forbidden,
    but,
    call,
    Key,
)


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
        assert_forbidden(r, f"scoped to pod {world.A}", code="forbidden")
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
        assert_forbidden(r, f"scoped to pod {world.A}", code="forbidden")
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
