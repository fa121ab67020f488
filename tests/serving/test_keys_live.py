"""API keys over the API against a real server with two worker processes: the
official SDK drives every key method and the user story; a key that expires, is
deleted or loses its pod is refused on its very next request at either worker."""

import http.client
import json
import os
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from agentmail import AgentMail
from agentmail.api_keys import (
    ApiKeyPermissions,
    BearerApiKey,
    CreateApiKeyResponse,
    CreateBearerApiKeyRequest,
    CreatePublicKeyRequest,
    ListApiKeysResponse,
    PublicJwk,
)
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError, ValidationError
from conftest import new_database
from dbtools import BACKENDS
from live import Server, run_app

FORBIDDEN = {"name": "ForbiddenError", "code": "forbidden"}


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    db = new_database(request.param, folder, request)
    assert run_app("init", "--db", db).returncode == 0
    s = Server(db, "--workers", "2", workdir=folder)
    yield s
    assert s.stop() == 0


def org_key(server, org: str) -> str:
    """A new organization key of ``org``, made as an operator makes one."""
    result = run_app("keys", "create", "--org", org, "--db", server.db)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


@pytest.fixture
def sdk(server):
    """sdk(token) -> an AgentMail client aimed at the server; closed afterwards."""
    transports = []

    def make(token):
        transports.append(httpx.Client(timeout=30))
        environment = AgentMailEnvironment(http=server.url + "/agent", websockets="ws://unused")
        return AgentMail(api_key=token, environment=environment, httpx_client=transports[-1])

    yield make
    for t in transports:
        t.close()


def granted(permissions: ApiKeyPermissions | None) -> dict | None:
    return None if permissions is None else permissions.model_dump(exclude_none=True)


def test_the_sdk_drives_every_organization_key_method(server, sdk):
    org = sdk(org_key(server, "sdk-org"))
    made = org.api_keys.create(request=CreateBearerApiKeyRequest(
        name="ci", permissions=ApiKeyPermissions(pod_read=True, api_key_read=True)))
    assert isinstance(made, CreateApiKeyResponse)
    assert made.api_key.startswith("pods_") and made.prefix == made.api_key[:12]
    assert (made.name, made.pod_id, made.expires_at) == ("ci", None, None)
    assert granted(made.permissions) == {"pod_read": True, "api_key_read": True}

    got = org.api_keys.get(api_key_id=made.api_key_id)
    assert isinstance(got, BearerApiKey) and got.type == "bearer"
    assert (got.api_key_id, got.prefix, got.name, got.pod_id) == (made.api_key_id, made.prefix, "ci", None)
    assert got.created_at == got.updated_at == made.created_at and got.created_at.tzinfo is not None
    assert got.used_at is None and granted(got.permissions) == granted(made.permissions)

    listed = org.api_keys.list()
    assert isinstance(listed, ListApiKeysResponse) and listed.count == 2 and listed.next_page_token is None
    assert listed.api_keys[0] == got and listed.api_keys[1].permissions is None  # the CLI's key: every permission
    first = org.api_keys.list(limit=1)
    assert first.api_keys == [got] and first.next_page_token
    rest = org.api_keys.list(limit=1, page_token=first.next_page_token)
    assert rest.api_keys == [listed.api_keys[1]] and rest.next_page_token is None
    assert org.api_keys.list(ascending=True).api_keys == listed.api_keys[::-1]
    assert org.api_keys.list(type="bearer").api_keys == listed.api_keys
    assert org.api_keys.list(type="public_key").count == 0
    with pytest.raises(ApiError) as e:
        org.api_keys.list(type="oauth")
    assert e.value.status_code == 400 and "type" in e.value.body["errors"]

    updated = org.api_keys.update(api_key_id=made.api_key_id, name="ci-2", permissions=ApiKeyPermissions(pod_read=True))
    assert isinstance(updated, BearerApiKey)
    assert (updated.name, granted(updated.permissions)) == ("ci-2", {"pod_read": True})
    assert updated.updated_at > updated.created_at == made.created_at
    assert org.api_keys.update(api_key_id=made.api_key_id).name == "ci-2"  # nothing given: nothing changed

    with pytest.raises(ValidationError) as e:
        org.api_keys.create(request=CreateBearerApiKeyRequest(name=""))
    assert set(e.value.body.errors) == {"name"}
    with pytest.raises(ValidationError) as e:
        org.api_keys.create(request=CreatePublicKeyRequest(public_key=PublicJwk(x="AAAA", y="AAAA"), name="jwk"))
    assert set(e.value.body.errors) == {"public_key"}
    with pytest.raises(ValidationError) as e:
        org.api_keys.update(api_key_id=made.api_key_id, request_options={
            "additional_body_parameters": {"expires_at": "2999-01-01T00:00:00Z"}})
    assert set(e.value.body.errors) == {"expires_at"}

    agent = sdk(made.api_key)
    with pytest.raises(ApiError) as e:  # pod_read only: no api_key_read any more
        agent.api_keys.list()
    assert e.value.status_code == 403 and e.value.body == {**FORBIDDEN, "message": e.value.body["message"]}
    assert "api_key_read" in e.value.body["message"]

    assert org.api_keys.delete(api_key_id=made.api_key_id) is None
    for call in (lambda: org.api_keys.get(api_key_id=made.api_key_id),
                 lambda: org.api_keys.update(api_key_id=made.api_key_id, name="x"),
                 lambda: org.api_keys.delete(api_key_id=made.api_key_id)):
        with pytest.raises(NotFoundError) as e:
            call()
        assert e.value.body.name == "NotFoundError"
    assert [k.api_key_id for k in org.api_keys.list().api_keys] == [listed.api_keys[1].api_key_id]
    with pytest.raises(ApiError) as e:
        agent.pods.list()
    assert e.value.status_code == 401


def test_the_sdk_drives_every_pod_key_method(server, sdk):
    org = sdk(org_key(server, "sdk-pods"))
    pod, other = org.pods.create(client_id="p"), org.pods.create(client_id="q")
    made = org.pods.api_keys.create(pod_id=pod.pod_id, request=CreateBearerApiKeyRequest(name="pk"))
    assert isinstance(made, CreateApiKeyResponse)
    assert (made.pod_id, made.name, made.permissions) == (pod.pod_id, "pk", None)
    second = org.pods.api_keys.create(pod_id=pod.pod_id, request=CreateBearerApiKeyRequest(
        permissions=ApiKeyPermissions(api_key_read=True, api_key_create=True, pod_read=True)))
    assert second.name == second.prefix
    assert granted(second.permissions) == {"api_key_read": True, "api_key_create": True, "pod_read": True}

    listed = org.pods.api_keys.list(pod_id=pod.pod_id)
    assert [k.api_key_id for k in listed.api_keys] == [second.api_key_id, made.api_key_id]
    assert all(isinstance(k, BearerApiKey) and k.pod_id == pod.pod_id for k in listed.api_keys)
    page = org.pods.api_keys.list(pod_id=pod.pod_id, limit=1)
    assert page.count == 1 and page.api_keys == listed.api_keys[:1]
    assert org.pods.api_keys.list(pod_id=pod.pod_id, page_token=page.next_page_token).api_keys == listed.api_keys[1:]
    assert org.pods.api_keys.list(pod_id=other.pod_id).count == 0

    updated = org.pods.api_keys.update(pod_id=pod.pod_id, api_key_id=made.api_key_id, name="pk-2",
                                       permissions=ApiKeyPermissions(pod_read=True))
    assert (updated.name, updated.pod_id, granted(updated.permissions)) == ("pk-2", pod.pod_id, {"pod_read": True})
    assert org.api_keys.get(api_key_id=made.api_key_id) == updated

    # The pod's own key manages its pod's keys, and sees nothing else.
    agent = sdk(second.api_key)
    assert [k.api_key_id for k in agent.api_keys.list().api_keys] == [second.api_key_id, made.api_key_id]
    assert [p.pod_id for p in agent.pods.list().pods] == [pod.pod_id]
    for call in (lambda: agent.pods.api_keys.list(pod_id=other.pod_id),
                 lambda: agent.pods.api_keys.create(pod_id=other.pod_id, request=CreateBearerApiKeyRequest(
                     permissions=ApiKeyPermissions(pod_read=True))),
                 lambda: org.pods.api_keys.update(pod_id=other.pod_id, api_key_id=made.api_key_id, name="x"),
                 lambda: org.pods.api_keys.delete(pod_id=other.pod_id, api_key_id=made.api_key_id),
                 lambda: org.pods.api_keys.list(pod_id="no-such-pod")):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(ApiError) as e:  # more than it has itself
        agent.pods.api_keys.create(pod_id=pod.pod_id, request=CreateBearerApiKeyRequest(
            permissions=ApiKeyPermissions(pod_read=True, pod_delete=True)))
    assert e.value.status_code == 403 and "pod_delete" in e.value.body["message"]
    reader = sdk(made.api_key)  # pod_read only, since the update
    for pod_id in (pod.pod_id, other.pod_id):  # no api_key_create: 403 before the pod's scope is looked at
        with pytest.raises(ApiError) as e:
            reader.pods.api_keys.create(pod_id=pod_id, request=CreateBearerApiKeyRequest(
                permissions=ApiKeyPermissions(pod_read=True)))
        assert e.value.status_code == 403 and "api_key_create" in e.value.body["message"]
    with pytest.raises(ValidationError) as e:
        org.pods.api_keys.create(pod_id=pod.pod_id, request=CreateBearerApiKeyRequest(
            expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    assert set(e.value.body.errors) == {"expires_at"}

    assert org.pods.api_keys.delete(pod_id=pod.pod_id, api_key_id=made.api_key_id) is None
    with pytest.raises(NotFoundError):
        org.pods.api_keys.delete(pod_id=pod.pod_id, api_key_id=made.api_key_id)
    with pytest.raises(NotFoundError):
        org.pods.api_keys.update(pod_id=pod.pod_id, api_key_id=made.api_key_id, name="x")
    assert [k.api_key_id for k in org.pods.api_keys.list(pod_id=pod.pod_id).api_keys] == [second.api_key_id]


@pytest.fixture
def sdk_made_clients(monkeypatch):
    """Closes the HTTP clients an AgentMail makes for itself (the story makes two)."""
    made = []

    class Tracked(httpx.Client):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(httpx, "Client", Tracked)
    yield
    for client in made:
        client.close()


def test_the_user_story(server, sdk_made_clients):
    ORG_KEY = org_key(server, "story")
    environment = AgentMailEnvironment(http=server.url + "/agent", websockets="ws://unused")
    org = AgentMail(api_key=ORG_KEY, environment=environment)
    other = org.pods.create(client_id="customer-41").pod_id
    pod = org.pods.create(client_id="customer-42")
    made = org.pods.api_keys.create(pod_id=pod.pod_id,
                                    request=CreateBearerApiKeyRequest(name="agent",
                                        permissions=ApiKeyPermissions(pod_read=True)))
    agent = AgentMail(api_key=made.api_key, environment=environment)
    assert agent.pods.list().pods == [pod]  # exactly that one pod
    with pytest.raises(NotFoundError):
        agent.pods.get(pod_id=other)
    with pytest.raises(ApiError) as e:
        agent.pods.delete(pod_id=pod.pod_id)  # 403: no pod_delete
    assert e.value.status_code == 403 and "pod_delete" in e.value.body["message"]
    assert org.pods.get(pod_id=pod.pod_id) == pod
    org.api_keys.delete(api_key_id=made.api_key_id)  # agent's next call: 401
    with pytest.raises(ApiError) as e:
        agent.pods.list()
    assert e.value.status_code == 401 and e.value.body["name"] == "UnauthorizedError"


# -- two workers: nothing one process cached outlives a change made at the other --------


def _worker_pids(server) -> list[int]:
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _serving_pid(server, conn: http.client.HTTPConnection, pids) -> int:
    """The worker process holding the server's end of ``conn`` (Linux: /proc)."""
    client_port = conn.sock.getsockname()[1]
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    inodes = {row[9] for row in rows
              if int(row[1].rsplit(":", 1)[1], 16) == server.port and int(row[2].rsplit(":", 1)[1], 16) == client_port}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{inode}]" for inode in inodes}:
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError("no worker holds the connection")


class Worker:
    """A keep-alive connection that one known worker process serves."""

    def __init__(self, conn: http.client.HTTPConnection):
        self.conn = conn

    def request(self, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict | None]:
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body), "application/json"
        self.conn.request(method, "/agent/v0" + path, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None


@pytest.fixture
def workers(server):
    """One connection to each of the two workers: (the one, the other)."""
    pids, pinned = _worker_pids(server), {}
    assert len(pids) == 2
    for _ in range(200):  # the kernel spreads connections over the workers' sockets
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", "/healthz")  # answered, so accepted: now held by its worker
            assert json.loads(conn.getresponse().read()) == {"status": "ok"}
            pid = _serving_pid(server, conn, pids)
        except BaseException:
            conn.close()
            raise
        if pid in pinned:
            conn.close()
        else:
            pinned[pid] = Worker(conn)
        if len(pinned) == 2:
            break
    assert len(pinned) == 2, "every connection went to one worker"
    yield tuple(pinned.values())
    for w in pinned.values():
        w.conn.close()


def _make(worker: Worker, token: str, path: str, body: dict) -> dict:
    status, made = worker.request("POST", path, token, body)
    assert status == 200, made
    return made


def test_a_deleted_key_is_401_at_the_other_worker_on_its_next_request(server, workers):
    one, other = workers
    root = org_key(server, "two-workers")
    for deleter in ("root", "itself"):
        key = _make(one, root, "/api-keys", {"name": deleter})
        for w in workers:  # each process has authenticated it
            assert w.request("GET", "/pods", key["api_key"])[0] == 200
        by = root if deleter == "root" else key["api_key"]
        status, _ = one.request("DELETE", f"/api-keys/{key['api_key_id']}", by)
        assert status == 200
        assert other.request("GET", "/pods", key["api_key"])[0] == 401
        assert one.request("GET", "/pods", key["api_key"])[0] == 401
        assert other.request("GET", f"/api-keys/{key['api_key_id']}", root)[0] == 404


def test_a_key_whose_pod_is_deleted_is_401_at_the_other_worker(server, workers):
    one, other = workers
    root = org_key(server, "pod-gone")
    pod = _make(one, root, "/pods", {"client_id": "doomed"})
    key = _make(one, root, f"/pods/{pod['pod_id']}/api-keys", {"permissions": {"pod_read": True}})
    for w in workers:
        assert w.request("GET", f"/pods/{pod['pod_id']}", key["api_key"])[0] == 200
    assert one.request("DELETE", f"/pods/{pod['pod_id']}", root)[0] == 200
    assert other.request("GET", "/pods", key["api_key"])[0] == 401
    assert one.request("GET", "/pods", key["api_key"])[0] == 401


def test_changed_permissions_hold_at_the_other_worker_on_the_next_request(server, workers):
    one, other = workers
    root = org_key(server, "patched")
    key = _make(one, root, "/api-keys", {"permissions": {"pod_read": True, "pod_create": True}})
    for w in workers:
        assert w.request("GET", "/pods", key["api_key"])[0] == 200
    fewer = {"permissions": {"pod_create": True}}
    status, patched = one.request("PATCH", f"/api-keys/{key['api_key_id']}", root, fewer)
    assert (status, patched["permissions"]) == (200, {"pod_create": True})
    status, body = other.request("GET", "/pods", key["api_key"])
    assert (status, body["code"]) == (403, "forbidden") and "pod_read" in body["message"]


def test_a_key_that_expires_in_two_seconds_works_then_is_401_at_every_worker(server, workers, sdk):
    one, other = workers
    root = org_key(server, "expiry")
    made = sdk(root).api_keys.create(request=CreateBearerApiKeyRequest(
        name="brief", expires_at=datetime.now(UTC) + timedelta(seconds=2)))
    assert made.expires_at is not None
    for w in workers:
        assert w.request("GET", "/pods", made.api_key)[0] == 200
    time.sleep(max(0.0, (made.expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
    for w in workers:
        status, body = w.request("GET", "/pods", made.api_key)
        assert (status, body["name"]) == (401, "UnauthorizedError")
    # Expired, not deleted: still listed, with its expiry.
    status, listed = other.request("GET", "/api-keys", root)
    assert [k["expires_at"] for k in listed["api_keys"] if k["api_key_id"] == made.api_key_id] == [
        made.expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
