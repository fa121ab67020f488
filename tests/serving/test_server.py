"""The real server, started as a user would, driven by the official agentmail SDK."""

import socket

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError, ValidationError
from live import Server


@pytest.fixture
def sdk():
    """sdk(url, key) -> an AgentMail client aimed at this server; closed afterwards."""
    transports = []

    def make(url, key):
        transports.append(httpx.Client(timeout=30))
        environment = AgentMailEnvironment(http=url + "/agent", websockets="ws://unused")
        return AgentMail(api_key=key, environment=environment, httpx_client=transports[-1])

    yield make
    for t in transports:
        t.close()


def test_first_start_prints_a_working_key_and_the_sdk_works_end_to_end(live_server, sdk):
    token = live_server.bootstrap_token
    client = sdk(live_server.url, token)

    pod = client.pods.create(name="Acme", client_id="acme-1")
    assert (pod.name, pod.client_id) == ("Acme", "acme-1")
    assert pod.created_at == pod.updated_at
    assert client.pods.create(client_id="acme-1", name="ignored").pod_id == pod.pod_id
    assert client.pods.get(pod_id=pod.pod_id) == pod

    created = [pod.pod_id] + [client.pods.create(name=f"p{i}").pod_id for i in range(6)]
    seen, token_ = [], None
    while True:
        page = client.pods.list(limit=3, page_token=token_)
        assert page.count == len(page.pods) <= 3
        seen += [p.pod_id for p in page.pods]
        token_ = page.next_page_token
        if token_ is None:
            break
    assert seen == created[::-1]
    ascending = client.pods.list(limit=100, ascending=True)
    assert [p.pod_id for p in ascending.pods] == created

    assert client.pods.delete(pod_id=pod.pod_id) is None
    with pytest.raises(NotFoundError) as e:
        client.pods.get(pod_id=pod.pod_id)
    assert e.value.body.name == "NotFoundError"
    with pytest.raises(NotFoundError):
        client.pods.delete(pod_id=pod.pod_id)
    with pytest.raises(ValidationError) as e:
        client.pods.create(name="")
    assert "name" in e.value.body.errors

    with pytest.raises(ApiError) as e:
        sdk(live_server.url, token + "x").pods.list()
    assert e.value.status_code == 401


def test_pods_api_key_from_the_environment(database, tmp_path, sdk):
    token = "operator-chosen-token-of-32-characters-or-more"
    s = Server(database, env={"PODS_API_KEY": token}, workdir=tmp_path)
    try:
        assert not any(line.startswith("pods_") for line in s.stdout.splitlines())
        assert sdk(s.url, token).pods.list().count == 0
    finally:
        s.stop()


def raw_exchange(url, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_level_errors_are_json_too(live_server):
    token = live_server.bootstrap_token
    big = httpx.post(live_server.url + "/agent/v0/pods", content=b"x" * (100 * 1024),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert big.status_code == 413
    assert big.json()["name"] == "PayloadTooLargeError"
    # A body too big even to buffer is answered from its headers alone, in JSON too.
    answer = raw_exchange(live_server.url, b"POST /agent/v0/pods HTTP/1.1\r\nHost: x\r\n"
                          b"Authorization: Bearer " + token.encode() + b"\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"application/json" in head
    assert b'"PayloadTooLargeError"' in body

    answer = raw_exchange(live_server.url, b"GARBAGE\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400") and b"application/json" in head
    assert b'"ValidationError"' in body

    # Just over waitress's 256 KiB header limit, so that it reads every byte sent
    # (unread bytes would make the kernel answer the close with a reset).
    answer = raw_exchange(live_server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 262_200 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 431") and b"application/json" in answer
    # And the server answers normally afterwards.
    assert httpx.get(live_server.url + "/healthz").json() == {"status": "ok"}


def test_head_and_get_answer_alike_minus_the_body(live_server):
    token = live_server.bootstrap_token
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}) as c:
        pod = c.post("/agent/v0/pods", json={"name": "h"}).json()
        got = c.get(f"/agent/v0/pods/{pod['pod_id']}")
        head = c.head(f"/agent/v0/pods/{pod['pod_id']}")
        assert (got.status_code, head.status_code) == (200, 200)
        assert head.content == b""
        assert head.headers["Content-Length"] == got.headers["Content-Length"] == str(len(got.content))
        assert got.json() == pod
        # The connection is still good after both.
        assert c.get("/healthz").json() == {"status": "ok"}
