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


@pytest.mark.parametrize("mangle", [
    lambda t: t.upper(), lambda t: t.lower(), lambda t: t.swapcase(),
    lambda t: t[:-1], lambda t: t[1:], lambda t: t[:-1] + chr(ord(t[-1]) ^ 1), lambda t: t + "x", lambda t: t + t,
    lambda t: t[:10] + " " + t[10:],  # padded inside
    lambda t: t + " x",  # padded, then more
    lambda t: "\t" + t,  # a tab is not a separating space
])
def test_near_miss_tokens_fail(world, mangle):
    server, tokens, clients, pods = world
    bad = mangle(tokens["acme"]).encode()
    status, body = raw_request(server.url, b"GET " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\nAuthorization: Bearer " + bad + b"\r\n\r\n")
    assert status == 401
    assert json.loads(body)["name"] == "UnauthorizedError"


def test_the_database_never_holds_a_token_in_plain_text(world):
    server, tokens, clients, pods = world
    stored = repr([query(server.db, f"SELECT * FROM {table}") for table in ("organization", "api_key", "pod", "setting")])
    assert all(token not in stored for token in tokens.values())
    for path in glob.glob(server.db + "*"):  # SQLite: the file, its WAL and shared memory too
        with open(path, "rb") as f:
            data = f.read()
        for token in tokens.values():
            assert token.encode() not in data, path
