"""Key bodies and list parameters refused in-process (400 naming the field, nothing
changed), and the checks in the contract's order: 401, 403, 404, 413/415/400, escalation."""

import time
from datetime import timedelta

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
    ESCALATION,
    LIMITED,
    assert_forbidden,
    at,
    but,
    call,
    Key,
    stored_time,
)


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
        assert_forbidden(r, *words, code=ESCALATION if who in ("limited", "expiring") else "missing_permission")
    assert state() == before
