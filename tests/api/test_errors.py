"""Every error is the contract's JSON, whatever produced it: a name, a message, the
code programs branch on, and a fix saying what to do next. In-process, on both
backends; the same from real servers, raw and through the SDK, and waitress's own
refusals: test_errors_live.py. Also three findings of an attack, reproduced and
now refused: page tokens bound to their list in one unambiguous encoding, a key
with an explicit set of permissions making an "every permission" key, and the
key-create answer cached."""

import base64
import hashlib
import hmac
import string
from datetime import UTC, datetime, timedelta

import pytest
from helpers import storage_of
from flask import make_response

from pods.api import pagetokens
from pods.api.auth import hash_key, new_token, token_prefix
from pods.api.errors import BY_STATUS, NAMES, SITUATIONS, error_body, error_response
from pods.api.permissions import PERMISSIONS, stored_permissions

URL = "/agent/v0/pods"
KEYS = "/agent/v0/api-keys"


def assert_error(r, status, name, code):
    assert r.status_code == status
    assert r.content_type == "application/json"
    assert r.json["name"] == name
    assert r.json["code"] == code
    assert isinstance(r.json["message"], str) and r.json["message"]
    assert isinstance(r.json["fix"], str) and len(r.json["fix"]) > 20, r.json
    return r.json


def key_of(app, org="acme", permissions=None, pod_id=None, expires_at=None) -> dict:
    """Request headers of a key stored directly (as the CLI does); ``permissions``:
    None for every permission, else the names granted."""
    token = new_token()
    granted = None if permissions is None else stored_permissions(frozenset(permissions))
    row = storage_of(app).insert_api_key(org, hash_key(token), token_prefix(token), None, pod_id, granted, expires_at)
    return {"Authorization": f"Bearer {token}", "key_id": row["key_id"]}


def auth(key: dict) -> dict:
    return {"Authorization": key["Authorization"]}


# -- the table ----------------------------------------------------------------------------


def test_every_situation_has_a_name_a_snake_case_code_a_message_and_a_fix_of_one_or_two_sentences():
    params = {"permission": "pod_delete", "permissions": "pod_create, pod_delete", "expires_at": "2030-01-01T00:00:00Z",
              "pod_id": "p", "action": "create pods", "limit": "32 KiB"}
    for situation, (status, code, _, _) in SITUATIONS.items():
        body = error_body(situation, **params)
        assert body["name"] == NAMES[status] and body["code"] == code, situation
        assert set(code) <= set(string.ascii_lowercase + "_"), code
        assert body["message"] and "{" not in body["message"], situation
        fix = body["fix"] if status != 400 else error_body(situation, errors={"name": ["x"]})["fix"]
        assert fix and "{" not in fix.replace("{pod_id}", ""), (situation, fix)
        assert 1 <= fix.count(". ") + 1 <= 2 and fix.endswith("."), (situation, fix)
    # Every status the server answers has a default situation (werkzeug's and waitress's errors).
    for status in (400, 401, 403, 404, 405, 413, 414, 415, 429, 431, 500, 501, 503, 505):
        assert error_body(status)["fix"], status
    assert set(BY_STATUS) == set(NAMES)
    # A status the table does not know still gets a code and a fix.
    assert error_body(416) == {"name": "RequestedRangeNotSatisfiableError",
                               "message": "Requested Range Not Satisfiable.",
                               "code": "requested_range_not_satisfiable",
                               "fix": "Change the request as the message says, then send it again."}


def test_the_contracts_codes_are_those_of_the_hosted_api():
    codes = {situation.code for situation in SITUATIONS.values()}
    assert codes >= {
        "missing_authorization", "unknown_api_key", "unauthorized",
        "missing_permission", "permission_escalation", "forbidden",
        "validation_error", "not_found", "rate_limit_exceeded", "internal_error", "service_unavailable",
    }
    assert {NAMES[s] for s in (414, 429)} == {"URITooLongError", "RateLimitError"}


def test_the_429_error_helper_gives_the_contracts_shape_with_retry_headers(app):
    """There is no rate limiter in this branch yet: the shape of its answer, as the
    helper it is to use builds it (error_response(429 or "rate_limit_exceeded",
    headers=...))."""
    headers = {"Retry-After": "2", "Retry-After-Ms": "1500"}
    for which in (429, "rate_limit_exceeded"):
        with app.test_request_context():
            r = make_response(error_response(which, headers=headers))
        assert r.status_code == 429
        assert (r.headers["Retry-After"], r.headers["Retry-After-Ms"]) == ("2", "1500")
        assert r.json == {
            "name": "RateLimitError",
            "code": "rate_limit_exceeded",
            "message": "Too many requests: the rate limit is exceeded.",
            "fix": "Wait as long as the Retry-After header says (in seconds; Retry-After-Ms in milliseconds), then"
                   " send the request again; nothing was done. Spread requests out to stay under the limit.",
        }
    with app.test_request_context():
        r = make_response(error_response(503, headers={"Retry-After": "1"}))
    assert (r.status_code, r.json["code"], r.headers["Retry-After"]) == (503, "service_unavailable", "1")
    assert "Retry-After" in r.json["fix"]


# -- 404, 405, 500, 503 ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/agent", "/agent/v0", "/agent/v1/pods", "/agent/v0/pods/", "/favicon.ico"])
def test_unknown_routes_are_json_404(client, headers, path):
    body = assert_error(client.get(path, headers=headers), 404, "NotFoundError", "not_found")
    assert "/agent/v0" in body["fix"] and "openapi.json" in body["fix"]


def test_a_pod_or_key_not_found_says_how_to_find_the_right_id(client, headers):
    body = assert_error(client.get(f"{URL}/nope", headers=headers), 404, "NotFoundError", "not_found")
    assert body["message"] == "Pod not found." and "GET /agent/v0/pods" in body["fix"]
    body = assert_error(client.get(f"{KEYS}/nope", headers=headers), 404, "NotFoundError", "not_found")
    assert body["message"] == "API key not found." and "GET /agent/v0/api-keys" in body["fix"]


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("put", "/agent/v0/pods", {"GET", "POST"}),
        ("patch", "/agent/v0/pods", {"GET", "POST"}),
        ("delete", "/agent/v0/pods", {"GET", "POST"}),
        ("post", "/agent/v0/pods/x", {"GET", "DELETE"}),
        ("put", "/agent/v0/pods/x", {"GET", "DELETE"}),
        ("post", "/healthz", {"GET"}),
    ],
)
def test_wrong_method_is_json_405_with_allow(client, headers, method, path, allowed):
    r = getattr(client, method)(path, headers=headers)
    body = assert_error(r, 405, "MethodNotAllowedError", "method_not_allowed")
    assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}
    assert "Allow header" in body["fix"]


def test_unexpected_failure_is_json_500_without_a_traceback(app, client, headers, create, monkeypatch, caplog):
    pod = create(name="n")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(storage_of(app), "caller_for_key_hash", broken)
    r = client.get(f"/agent/v0/pods/{pod['pod_id']}", headers=headers)
    body = assert_error(r, 500, "InternalServerError", "internal_error")
    assert b"secret internals" not in r.data and b"Traceback" not in r.data
    assert "secret internals" in caplog.text  # logged for the operator instead
    assert "X-Request-Id" in body["fix"]


def test_healthz_is_503_while_the_database_cannot_be_read(app, client, monkeypatch):
    storage = storage_of(app)

    def unreadable():
        raise storage.unavailable[0]("the database went away")  # the driver's own kind of error

    monkeypatch.setattr(storage, "ping", unreadable)
    body = assert_error(client.get("/healthz"), 503, "ServiceUnavailableError", "service_unavailable")
    assert body["message"] == "Database is not answering." and "Retry in a few seconds" in body["fix"]


def test_a_request_the_database_cannot_serve_is_503_saying_when_to_retry(app, client, headers, monkeypatch):
    storage = storage_of(app)

    def unavailable(*args, **kwargs):
        raise storage.unavailable[0]("the database went away")

    monkeypatch.setattr(storage, "insert_pod", unavailable)
    body = assert_error(client.post(URL, json={"client_id": "c"}, headers=headers), 503, "ServiceUnavailableError",
                        "service_unavailable")
    assert body["fix"] == ("Retry in a few seconds: the database is not answering and nothing was changed. A create"
                           " with a client_id is safe to retry.")


# -- 401 --------------------------------------------------------------------------------------


UNKNOWN_API_KEY = {
    "name": "UnauthorizedError",
    "code": "unknown_api_key",
    "message": "A valid API key is required.",
    "fix": "The bearer token is not a live API key (unknown, deleted or expired): send the whole token exactly as it"
           " was shown when its key was made, or use another key. An operator makes one with `pods keys create --org"
           " ORG`; a key holding api_key_create can make one with POST /agent/v0/api-keys (a pod's: POST"
           " /agent/v0/pods/{pod_id}/api-keys).",
}


def test_401_says_which_header_to_send_and_nothing_about_keys(client):
    r = client.get(URL)
    body = assert_error(r, 401, "UnauthorizedError", "missing_authorization")
    assert "Authorization: Bearer <API key>" in body["fix"] and r.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "pods_x", "Bearer\tpods_x"):
        body = assert_error(client.get(URL, headers={"Authorization": header}), 401, "UnauthorizedError",
                            "unauthorized")
        assert "Bearer" in body["fix"]


def test_401_is_one_body_for_unknown_deleted_revoked_expired_and_near_miss_tokens(app, client):
    root = key_of(app)
    token = root["Authorization"].removeprefix("Bearer ")
    deleted = key_of(app)
    assert client.delete(f"{KEYS}/{deleted['key_id']}", headers=auth(root)).status_code == 200
    revoked = key_of(app)
    storage_of(app).revoke_api_key(revoked["key_id"])  # as `keys revoke` does
    past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expired = key_of(app, expires_at=past)
    tokens = {
        "unknown": "pods_" + "x" * 43,
        "deleted": deleted["Authorization"].removeprefix("Bearer "),
        "revoked": revoked["Authorization"].removeprefix("Bearer "),
        "expired": expired["Authorization"].removeprefix("Bearer "),
        "one character off": token[:-1] + ("A" if token[-1] != "A" else "B"),
        "one character short": token[:-1],
        "upper case": token.upper(),
        "padded": token + " ",
    }
    answers = {}
    for what, candidate in tokens.items():
        r = client.get(URL, headers={"Authorization": f"Bearer {candidate}"})
        assert r.status_code == 401, what
        answers[what] = (r.get_data(), r.headers["WWW-Authenticate"], r.headers["Content-Length"])
    assert len(set(answers.values())) == 1, answers
    assert client.get(URL, headers={"Authorization": "Bearer pods_unknown"}).json == UNKNOWN_API_KEY


# -- 403 --------------------------------------------------------------------------------------


def test_403_missing_permission_names_it_and_how_to_get_a_key_that_has_it(app, client):
    reader = key_of(app, permissions=["pod_read"])
    r = client.post(URL, json={}, headers=auth(reader))
    body = assert_error(r, 403, "ForbiddenError", "missing_permission")
    assert body == {
        "name": "ForbiddenError",
        "code": "missing_permission",
        "message": "This API key does not have the pod_create permission.",
        "fix": 'Use a key with the pod_create permission: one whose permissions object sets "pod_create": true, or'
               " has none (every permission). Ask for one from whoever gave you this key, or make one with a key"
               " that has pod_create and api_key_create (POST /agent/v0/api-keys).",
    }
    assert "WWW-Authenticate" not in r.headers
    maker = key_of(app, permissions=["pod_read"])
    body = assert_error(client.post(KEYS, json={}, headers=auth(maker)), 403, "ForbiddenError", "missing_permission")
    assert body["fix"].endswith("or make one with a key that has api_key_create (POST /agent/v0/api-keys).")


def test_403_permission_escalation_names_what_to_leave_out(app, client):
    maker = key_of(app, permissions=["pod_read", "api_key_create"])
    r = client.post(KEYS, json={"permissions": {"pod_read": True, "pod_delete": True, "pod_create": True}},
                    headers=auth(maker))
    body = assert_error(r, 403, "ForbiddenError", "permission_escalation")
    assert body["message"].endswith("it lacks pod_create, pod_delete.")
    assert body["fix"].startswith("Leave pod_create, pod_delete out of permissions")

    soon = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expiring = key_of(app, expires_at=soon)
    r = client.post(KEYS, json={"expires_at": "2999-01-01T00:00:00Z"}, headers=auth(expiring))
    body = assert_error(r, 403, "ForbiddenError", "permission_escalation")
    assert f"expires_at no later than {soon}" in body["fix"]


def test_403_forbidden_says_which_key_to_use(app, client, create):
    pod = create(name="p")
    scoped = key_of(app, pod_id=pod["pod_id"])
    body = assert_error(client.post(URL, json={}, headers=auth(scoped)), 403, "ForbiddenError", "forbidden")
    assert body["message"] == f"This API key is scoped to pod {pod['pod_id']}; it cannot create pods."
    assert body["fix"].startswith("Use an organization key (one not scoped to a pod) to create pods")
    body = assert_error(client.post(KEYS, json={}, headers=auth(scoped)), 403, "ForbiddenError", "forbidden")
    assert "to create organization keys" in body["fix"]


# -- 400, 413, 415 -------------------------------------------------------------------------------


def test_400_fix_names_each_field_to_correct_and_what_it_accepts(client, headers):
    r = client.post(URL, json={"name": "", "client_id": 7, "colour": "red"}, headers=headers)
    body = assert_error(r, 400, "ValidationError", "validation_error")
    assert set(body["errors"]) == {"name", "client_id", "colour"}
    text = "a string of 1 to 255 characters with no control characters, or null (or left out)"
    assert body["fix"] == (f"Correct what errors names: name must be {text}; client_id must be {text};"
                           " remove colour (not a field of this request).")

    r = client.get(URL, query_string={"limit": "0", "ascending": "maybe", "page_token": "x"}, headers=headers)
    body = assert_error(r, 400, "ValidationError", "validation_error")
    assert "limit must be an integer from 1 to 100" in body["fix"]
    assert "ascending must be true or false" in body["fix"]
    assert "page_token must be the next_page_token of the previous page of this same list" in body["fix"]

    r = client.post(URL, data=b"[1]", content_type="application/json", headers=headers)
    body = assert_error(r, 400, "ValidationError", "validation_error")
    assert body["fix"] == "Correct what errors names: the body must be one JSON object in UTF-8, each name once."

    r = client.post(KEYS, json={"permissions": {"pod_read": "yes", "colour": True}, "expires_at": "tomorrow"},
                    headers=headers)
    body = assert_error(r, 400, "ValidationError", "validation_error")
    assert "permissions must be an object whose names are the SDK's ApiKeyPermissions" in body["fix"]
    assert "expires_at must be an RFC 3339 time in the future" in body["fix"]


def test_413_and_415_say_what_to_send(client, headers):
    r = client.post(URL, data=b"{" + b" " * 70_000 + b"}", content_type="application/json", headers=headers)
    body = assert_error(r, 413, "PayloadTooLargeError", "payload_too_large")
    assert "at most 64 KiB" in body["fix"]
    r = client.post(URL, data=b"{}", content_type="text/plain", headers=headers)
    body = assert_error(r, 415, "UnsupportedMediaTypeError", "unsupported_media_type")
    assert "Content-Type: application/json" in body["fix"]
    r = client.post(URL, data=b"{}", content_type="application/json", headers={**headers, "Content-Encoding": "gzip"})
    body = assert_error(r, 415, "UnsupportedMediaTypeError", "unsupported_media_type")
    assert "uncompressed" in body["fix"]


# -- finding 1: a page token from one list passed another list's check ----------------------------


def old_token(secret: bytes, org_id: int, list_id: str, payload: bytes) -> str:
    """A page token as versions before this one minted it: a 16-byte HMAC of
    "{org}:" + payload (the organization's pods) or "{org}:{list}:" + payload (any
    other list), then the payload."""
    bound = f"{org_id}:".encode() if list_id == "pods" else f"{org_id}:{list_id}:".encode()
    mac = hmac.new(secret, bound + payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + payload).rstrip(b"=").decode()


def unpadded(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.fixture
def three_pods(app, client, headers, create, clock):
    for i in range(3):
        clock.set(f"2026-01-01T00:00:0{i}.000000Z")
        create(name=f"p{i}")
    pods = client.get(URL, headers=headers).json["pods"]
    org_id = storage_of(app).caller_for_key_hash(hash_key(headers["Authorization"][7:]), None)["org_id"]
    return app.config["PAGE_TOKEN_SECRET"], org_id, pods


def test_tokens_minted_the_old_way_keep_working(client, headers, three_pods):
    secret, org_id, pods = three_pods
    first = pods[0]
    token = old_token(secret, org_id, "pods", f"d\n{first['created_at']}\n{first['pod_id']}".encode())
    r = client.get(URL, query_string={"page_token": token}, headers=headers)
    assert r.status_code == 200 and r.json["pods"] == pods[1:]
    # A key list's, signed with its list id.
    keys = client.get(KEYS, headers=headers).json["api_keys"]
    token = old_token(secret, org_id, "api-keys:*", f"a\n{keys[0]['created_at']}\n{keys[0]['api_key_id']}".encode())
    r = client.get(KEYS, query_string={"page_token": token}, headers=headers)
    assert r.status_code == 200 and r.json["api_keys"] == []


def test_a_key_list_token_with_its_list_put_in_front_of_its_payload_is_refused_by_the_pod_list(
        client, headers, three_pods):
    """The attack: the old pod list signed "{org}:" + payload, every other list
    "{org}:{list}:" + payload, so a key-list token whose payload is prefixed with
    "api-keys:*:" carried a valid pod-list signature. It was read as a descending
    position; now it is a 400 on page_token, old format and new."""
    secret, org_id, pods = three_pods
    position = f"d\n{pods[0]['created_at']}\n{pods[0]['pod_id']}".encode()
    key_list_mac = unpadded(old_token(secret, org_id, "api-keys:*", position))[:16]
    forged = base64.urlsafe_b64encode(key_list_mac + b"api-keys:*:" + position).rstrip(b"=").decode()
    assert pagetokens._old_mac(secret, org_id, "pods", b"api-keys:*:" + position) == key_list_mac  # it did verify
    r = client.get(URL, query_string={"page_token": forged}, headers=headers)
    assert r.status_code == 400 and set(r.json["errors"]) == {"page_token"}, r.json

    # Tokens issued now: the list is signed as a length-prefixed field, never a prefix of the payload.
    assert client.post(KEYS, json={}, headers=headers).status_code == 200  # two keys: a key list of two pages
    keys_token = client.get(KEYS, query_string={"limit": 1}, headers=headers).json["next_page_token"]
    r = client.get(URL, query_string={"page_token": keys_token}, headers=headers)
    assert r.status_code == 400 and set(r.json["errors"]) == {"page_token"}
    raw = unpadded(client.get(URL, query_string={"limit": 1}, headers=headers).json["next_page_token"])
    assert raw[:1] == pagetokens.VERSION
    for prefix in (b"api-keys:*:", b"pods:", b"x"):
        edited = raw[:17] + prefix + raw[17:]
        token = base64.urlsafe_b64encode(edited).rstrip(b"=").decode()
        assert client.get(URL, query_string={"page_token": token}, headers=headers).status_code == 400


@pytest.mark.parametrize("direction", [b"x", b"A", b"D", b"", b"dd", b"asc", b"d\x00"])
def test_a_direction_other_than_exactly_a_or_d_is_invalid(client, headers, three_pods, direction):
    secret, org_id, pods = three_pods
    payload = direction + f"\n{pods[0]['created_at']}\n{pods[0]['pod_id']}".encode()
    new = base64.urlsafe_b64encode(
        pagetokens.VERSION + pagetokens._mac(secret, org_id, "pods", payload) + payload).rstrip(b"=").decode()
    for token in (old_token(secret, org_id, "pods", payload), new):
        r = client.get(URL, query_string={"page_token": token}, headers=headers)
        assert r.status_code == 400 and set(r.json["errors"]) == {"page_token"}, (direction, r.json)


def test_the_signed_encoding_is_unambiguous():
    secret = b"s" * 32
    payload = b"d\n2026-01-01T00:00:00.000000Z\nid"
    macs = {
        pagetokens._mac(secret, org, list_id, p)
        for org, list_id, p in [(1, "pods", payload), (12, "pods", payload), (1, "2:pods", payload),
                                (1, "api-keys:*", payload), (1, "api-keys", b"*:" + payload),
                                (1, "pods:x", payload), (1, "pods", b"x:" + payload)]
    }
    assert len(macs) == 7
    # A token is bound to its organization and list, and decodes to its position.
    token = pagetokens.encode(secret, 1, "api-keys:*", False, "2026-01-01T00:00:00.000000Z", "id")
    assert pagetokens.decode(secret, 1, "api-keys:*", token) == (False, ("2026-01-01T00:00:00.000000Z", "id"))
    for org, list_id in ((2, "api-keys:*"), (1, "pods"), (1, "api-keys:p")):
        with pytest.raises(ValueError):
            pagetokens.decode(secret, org, list_id, token)


# -- finding 2: a key listing every permission made an "every permission" key ----------------------


def test_a_key_listing_every_permission_makes_keys_with_that_explicit_set(app, client, sql, monkeypatch):
    """The attack: a key that lists every current permission (not "every
    permission") created a key with permissions absent, stored as "every
    permission", which holds any permission a later version adds: more than its
    maker. Now the new key gets its maker's explicit set."""
    explicit = key_of(app, permissions=PERMISSIONS)
    for body in ({}, {"permissions": None}, {"name": "child"}):
        r = client.post(KEYS, json=body, headers=auth(explicit))
        assert r.status_code == 200, r.json
        assert r.json["permissions"] == dict.fromkeys(PERMISSIONS, True)
        stored = sql("SELECT permissions FROM api_key WHERE key_id = ?", (r.json["api_key_id"],))
        assert stored == [(stored_permissions(frozenset(PERMISSIONS)),)]  # not NULL: no names to come
    # After an upgrade that adds a permission, the child does not have it (nor does its maker); a key
    # stored with every permission does.
    from pods.api import permissions

    monkeypatch.setattr(permissions, "EVERY_PERMISSION", frozenset((*PERMISSIONS, "pod_transfer")))
    permissions.permissions_from.cache_clear()
    try:
        def caller(token):
            return permissions.Caller.from_row(storage_of(app).caller_for_key_hash(hash_key(token), None))

        assert "pod_transfer" not in caller(r.json["api_key"]).permissions
        assert "pod_transfer" in caller(key_of(app)["Authorization"][7:]).permissions
    finally:
        permissions.permissions_from.cache_clear()


def test_only_a_key_with_every_permission_makes_an_every_permission_key(app, client, sql, headers):
    r = client.post(KEYS, json={}, headers=headers)  # the fixture's key: every permission
    assert r.status_code == 200 and "permissions" not in r.json
    assert sql("SELECT permissions FROM api_key WHERE key_id = ?", (r.json["api_key_id"],)) == [(None,)]
    # A narrower key's absent permissions: its own.
    narrow = key_of(app, permissions=["api_key_create", "pod_read"])
    r = client.post(KEYS, json={}, headers=auth(narrow))
    assert r.status_code == 200 and r.json["permissions"] == {"api_key_create": True, "pod_read": True}


# -- finding 4: the answer carrying a new key's token could be cached --------------------------------


def test_every_answer_that_carries_a_token_is_not_to_be_stored(client, headers, create):
    pod = create(name="p")
    for path in (KEYS, f"{URL}/{pod['pod_id']}/api-keys"):
        r = client.post(path, json={}, headers=headers)
        assert r.status_code == 200 and r.json["api_key"].startswith("pods_")
        assert r.headers["Cache-Control"] == "no-store"
    # No other answer carries a token.
    made = r.json
    for r in (client.get(KEYS, headers=headers), client.get(f"{KEYS}/{made['api_key_id']}", headers=headers),
              client.patch(f"{KEYS}/{made['api_key_id']}", json={"name": "n"}, headers=headers)):
        assert r.status_code == 200 and made["api_key"] not in r.get_data(as_text=True)
        assert "api_key" not in r.json and all("api_key" not in key for key in r.json.get("api_keys", []))
