import glob
import hashlib

import pytest

from conftest import storage_of

POD_ENDPOINTS = [
    ("get", "/agent/v0/pods"),
    ("post", "/agent/v0/pods"),
    ("get", "/agent/v0/pods/some-id"),
    ("delete", "/agent/v0/pods/some-id"),
    ("get", "/agent/v0/pods/line%0Abreak"),
    ("delete", "/agent/v0/pods/a%00b"),
    ("get", "/agent/v0/pods/%FF%FE"),
    ("get", "/agent/v0/pods/a%5Cb"),
]


def token_of(headers):
    return headers["Authorization"].removeprefix("Bearer ")


def assert_unauthorized(r):
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json == {
        "name": "UnauthorizedError",
        "code": "unauthorized",
        "message": "A valid API key is required.",
    }


@pytest.mark.parametrize("method,path", POD_ENDPOINTS)
def test_every_pod_endpoint_needs_a_key(client, sql, method, path):
    assert_unauthorized(getattr(client, method)(path))
    assert sql("SELECT count(*) FROM pod") == [(0,)]


@pytest.mark.parametrize("path", ["/agent/v0/pods/a/b", "/agent/v0/pods/a%2Fb", "/agent/v0/pods/x/inboxes"])
def test_a_path_that_is_no_route_is_404_before_authentication(client, path):
    # Routing decides first: a pod id is one path segment.
    r = client.delete(path)
    assert r.status_code == 404
    assert r.json == {"name": "NotFoundError", "message": "Not found.", "code": "not_found"}


@pytest.mark.parametrize(
    "header",
    [
        lambda t: None,
        lambda t: "",
        lambda t: "Bearer",
        lambda t: "Bearer ",
        lambda t: "Basic " + t,
        lambda t: "Token " + t,
        lambda t: t,
        lambda t: "Bearer pods_unknown",
        lambda t: "Bearer " + t + " ",  # padded
        lambda t: "Bearer " + t + "\t",
        lambda t: "Bearer \t" + t,
        lambda t: "Bearer " + t[:-1],  # one character short
        lambda t: "Bearer " + t[:-1] + ("A" if t[-1] != "A" else "B"),  # one character off
        lambda t: "Bearer " + t + "x",
        lambda t: "Bearer " + t.upper(),
        lambda t: "Bearer " + t.swapcase(),
        lambda t: "Bearer " + t + "=",
        lambda t: "Bearer " + t + ",x=1",
    ],
)
def test_bad_credentials_are_all_answered_alike(client, headers, sql, header):
    value = header(token_of(headers))
    r = client.post("/agent/v0/pods", json={}, headers={} if value is None else {"Authorization": value})
    assert_unauthorized(r)
    assert sql("SELECT count(*) FROM pod") == [(0,)]


def test_scheme_is_case_insensitive_and_separating_spaces_are_skipped(client, headers):
    token = token_of(headers)
    for value in ("bearer " + token, "BEARER " + token, "Bearer    " + token):
        r = client.get("/agent/v0/pods", headers={"Authorization": value})
        assert r.status_code == 200, value
        assert r.json["count"] == 0


def test_revoked_key_fails_on_the_very_next_request(app, client, make_key):
    headers, key_id = make_key("acme")
    assert client.get("/agent/v0/pods", headers=headers).status_code == 200
    assert storage_of(app).revoke_api_key(key_id) is not None
    assert_unauthorized(client.get("/agent/v0/pods", headers=headers))


def test_keys_are_stored_hashed_never_in_plain_text(app, client, headers, sql):
    token = token_of(headers)
    client.post("/agent/v0/pods", json={"name": "n"}, headers=headers)
    assert sql("SELECT key_hash FROM api_key") == [(hashlib.sha256(token.encode()).hexdigest(),)]
    # The database, its WAL and its shared-memory index: the token is in none of them.
    for path in glob.glob(app.config["DB"] + "*"):
        with open(path, "rb") as f:
            assert token.encode() not in f.read(), path


def test_health_and_openapi_need_no_key(client):
    r = client.get("/healthz")
    assert (r.status_code, r.json) == (200, {"status": "ok"})
    r = client.get("/agent/v0/openapi.json")
    assert r.status_code == 200
    assert r.json["openapi"].startswith("3.")
