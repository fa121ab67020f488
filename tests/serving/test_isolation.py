"""Three organizations on one live server: none ever sees another's pods."""

import glob
import json

import httpx
import pytest
from conftest import new_database
from dbtools import BACKENDS, query
from live import Server, raw_request, run_app

URL = "/agent/v0/pods"
ORGS = ("acme", "globex", "initech")
NOT_FOUND = {"name": "NotFoundError", "message": "Pod not found.", "code": "not_found"}


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    """A server with three organizations, each with a key and five pods."""
    folder = tmp_path_factory.mktemp("iso")
    db = new_database(request.param, folder, request)
    assert run_app("init", "--db", db).returncode == 0
    tokens = {}
    for org in ORGS:
        result = run_app("keys", "create", "--org", org, "--db", db)
        assert result.returncode == 0, result.stderr
        tokens[org] = result.stdout.splitlines()[-1]
    server = Server(db, workdir=folder)
    clients = {org: httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {t}"}) for org, t in tokens.items()}
    pods = {org: [clients[org].post(URL, json={"name": f"{org} {i}", "client_id": f"shared-{i}"}).json()
                  for i in range(5)] for org in ORGS}
    yield server, tokens, clients, pods
    for c in clients.values():
        c.close()
    assert server.stop() == 0


def test_other_organizations_pods_answer_as_if_they_did_not_exist(world):
    server, tokens, clients, pods = world
    for viewer in ORGS:
        c = clients[viewer]
        listed = c.get(URL, params={"limit": 100}).json()
        assert sorted(p["pod_id"] for p in listed["pods"]) == sorted(p["pod_id"] for p in pods[viewer])
        for owner in ORGS:
            if owner == viewer:
                continue
            for pod in pods[owner]:
                for r in (c.get(f"{URL}/{pod['pod_id']}"), c.delete(f"{URL}/{pod['pod_id']}")):
                    assert (r.status_code, r.json()) == (404, NOT_FOUND)
                # The same client_id in another organization is another pod.
                mine = c.post(URL, json={"client_id": pod["client_id"]}).json()
                assert mine["pod_id"] != pod["pod_id"] and mine["name"].startswith(viewer)
    for owner in ORGS:  # nothing was deleted by the others' attempts
        for pod in pods[owner]:
            assert clients[owner].get(f"{URL}/{pod['pod_id']}").json() == pod


def test_page_tokens_do_not_cross_organizations(world):
    server, tokens, clients, pods = world
    token = clients["acme"].get(URL, params={"limit": 2}).json()["next_page_token"]
    for other in ("globex", "initech"):
        r = clients[other].get(URL, params={"limit": 2, "page_token": token})
        assert r.status_code == 400 and set(r.json()["errors"]) == {"page_token"}


def test_a_key_revoked_from_the_cli_fails_on_the_very_next_request(world):
    server, tokens, clients, pods = world
    created = run_app("keys", "create", "--org", "globex", "--db", server.db)
    second = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {created.stdout.splitlines()[-1]}"})
    with second:
        assert second.get(URL).json()["count"] >= 5
        key_id = run_app("keys", "list", "--db", server.db).stdout.splitlines()[-1].split("\t")[0]
        assert run_app("keys", "revoke", key_id, "--db", server.db).returncode == 0
        r = second.get(URL)
        assert r.status_code == 401 and r.json()["name"] == "UnauthorizedError"
    assert clients["globex"].get(URL).status_code == 200  # the organization's other key still works


MANGLES = [
    lambda t: t.upper(), lambda t: t.lower(), lambda t: t.swapcase(),
    lambda t: t[:-1], lambda t: t[1:], lambda t: t[:-1] + chr(ord(t[-1]) ^ 1), lambda t: t + "x", lambda t: t + t,
    lambda t: t[:10] + " " + t[10:],  # padded inside
    lambda t: t + " x",  # padded, then more
    lambda t: "\t" + t,  # a tab is not a separating space
]


def assert_near_miss_fails(server, token):
    status, body = raw_request(server.url, b"GET " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n")
    assert status == 401
    assert json.loads(body)["name"] == "UnauthorizedError"


@pytest.mark.parametrize("mangle", MANGLES)
def test_near_miss_tokens_fail(world, mangle):
    server, tokens, clients, pods = world
    assert_near_miss_fails(server, mangle(tokens["acme"]))


def test_the_database_never_holds_a_token_in_plain_text(world):
    server, tokens, clients, pods = world
    stored = repr([query(server.db, f"SELECT * FROM {table}") for table in ("organization", "api_key", "pod", "setting")])
    assert all(token not in stored for token in tokens.values())
    for path in glob.glob(server.db + "*"):  # SQLite: the file, its WAL and shared memory too
        with open(path, "rb") as f:
            data = f.read()
        for token in tokens.values():
            assert token.encode() not in data, path


# -- keys over the API: scoped, and never across organizations -----------------------

KEYS = "/agent/v0/api-keys"
KEY_NOT_FOUND = {"name": "NotFoundError", "message": "API key not found.", "code": "not_found"}


@pytest.fixture(scope="module")
def keys(world):
    """Each organization's keys made over the API: an organization key and a key
    scoped to its first pod, each with every permission. {org: {"org": made, "pod": made}}."""
    server, tokens, clients, pods = world
    made = {}
    for org in ORGS:
        c = clients[org]
        made[org] = {"org": c.post(KEYS, json={"name": f"{org} api"}).json(),
                     "pod": c.post(f"{URL}/{pods[org][0]['pod_id']}/api-keys", json={"name": f"{org} pod"}).json()}
        assert made[org]["pod"]["pod_id"] == pods[org][0]["pod_id"]
    return made


def test_other_organizations_keys_answer_as_if_they_did_not_exist(world, keys):
    server, tokens, clients, pods = world
    for viewer in ORGS:
        c = clients[viewer]
        listed = {k["api_key_id"] for k in c.get(KEYS, params={"limit": 100}).json()["api_keys"]}
        assert {k["api_key_id"] for k in keys[viewer].values()} <= listed
        for owner in ORGS:
            if owner == viewer:
                continue
            pod_id = pods[owner][0]["pod_id"]
            for made in keys[owner].values():
                assert made["api_key_id"] not in listed
                key_id = made["api_key_id"]
                for r in (c.get(f"{KEYS}/{key_id}"), c.patch(f"{KEYS}/{key_id}", json={"name": "mine now"}),
                          c.delete(f"{KEYS}/{key_id}")):
                    assert (r.status_code, r.json()) == (404, KEY_NOT_FOUND)
                for r in (c.patch(f"{URL}/{pod_id}/api-keys/{key_id}", json={"permissions": {}}),
                          c.delete(f"{URL}/{pod_id}/api-keys/{key_id}")):
                    assert (r.status_code, r.json()) == (404, NOT_FOUND)
            for r in (c.get(f"{URL}/{pod_id}/api-keys"), c.post(f"{URL}/{pod_id}/api-keys", json={})):
                assert (r.status_code, r.json()) == (404, NOT_FOUND)
    for owner in ORGS:  # untouched by the others' attempts, and still working
        for made in keys[owner].values():
            got = clients[owner].get(f"{KEYS}/{made['api_key_id']}").json()
            assert (got["name"], "permissions" in got) == (made["name"], False)
            r = httpx.get(server.url + URL, headers={"Authorization": f"Bearer {made['api_key']}"})
            assert r.status_code == 200


def test_a_pod_key_sees_its_pod_only_even_beside_its_namesakes(world, keys):
    """Every organization has a pod with client_id "shared-0"; a key scoped to one
    sees that pod and nothing of the others'."""
    server, tokens, clients, pods = world
    for org in ORGS:
        auth = {"Authorization": f"Bearer {keys[org]['pod']['api_key']}"}
        with httpx.Client(base_url=server.url, headers=auth) as c:
            assert [p["pod_id"] for p in c.get(URL).json()["pods"]] == [pods[org][0]["pod_id"]]
            assert c.post(URL, json={"client_id": "shared-0"}).status_code == 403
            for other in ORGS:
                for pod in pods[other][1 if other == org else 0:]:
                    assert (c.get(f"{URL}/{pod['pod_id']}").json()) == NOT_FOUND
            listed = c.get(KEYS).json()["api_keys"]
            assert [k["api_key_id"] for k in listed] == [keys[org]["pod"]["api_key_id"]]


def test_key_list_page_tokens_do_not_cross_organizations(world, keys):
    server, tokens, clients, pods = world
    acme = clients["acme"]
    pod_keys = f"{URL}/{pods['acme'][0]['pod_id']}/api-keys"
    token = acme.get(KEYS, params={"limit": 1}).json()["next_page_token"]
    second = acme.post(pod_keys, json={}).json()  # so that the pod's list has a second page
    pod_keys_token = acme.get(pod_keys, params={"limit": 1}).json()["next_page_token"]
    assert acme.delete(f"{KEYS}/{second['api_key_id']}").status_code == 200
    for other in ("globex", "initech"):
        for path, page_token in ((KEYS, token), (f"{URL}/{pods[other][0]['pod_id']}/api-keys", pod_keys_token)):
            r = clients[other].get(path, params={"page_token": page_token})
            assert r.status_code == 400 and set(r.json()["errors"]) == {"page_token"}


@pytest.mark.parametrize("mangle", MANGLES)
@pytest.mark.parametrize("which", ["org", "pod"])
def test_near_misses_of_keys_made_over_the_api_fail(world, keys, which, mangle):
    server, tokens, clients, pods = world
    assert_near_miss_fails(server, mangle(keys["initech"][which]["api_key"]))


def test_the_database_never_holds_a_key_made_over_the_api_in_plain_text(world, keys):
    server, tokens, clients, pods = world
    made = [k["api_key"] for org in ORGS for k in keys[org].values()]
    for path in glob.glob(server.db + "*"):
        with open(path, "rb") as f:
            data = f.read()
        assert not any(token.encode() in data for token in made), path
