"""Bodies over 64 KiB: a 413 that every client reads, also one that writes its whole
body before it reads the answer; the rest of the body is read and dropped, never
stored; past the bound the connection simply closes; the server goes on. Request
heads over 32 KiB: a 431, and nothing of them kept."""

import http.client
import json
import socket
import time

import httpx
import pytest
from live import Server

URL = "/agent/v0/pods"
KEY = "pods_body-limit-test-key-0123456789abcdefghijklmnop"
LIMIT = 64 * 1024
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("bodies") / "b.db", env={"PODS_API_KEY": KEY})
    yield s
    assert s.stop() == 0


def body_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (valid but for its size)."""
    head = b'{"name": "big", "client_id": "c"}'
    return head + b" " * (size - len(head))


def post_with_http_client(port, body, chunked=False, key=KEY, timeout=30):
    """POST ``body`` with http.client, which writes all of it before reading."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    try:
        if chunked:
            pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
            conn.request("POST", URL, body=pieces, headers=headers, encode_chunked=True)
        else:
            conn.request("POST", URL, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def pods_stored(server) -> int:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        return c.get(URL, params={"limit": 100}).json()["count"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [70 * 1024, 1 * MB, 10 * MB])
def test_http_client_reads_its_413(server, size, chunked):
    before = pods_stored(server)
    started = time.monotonic()
    status, body, headers = post_with_http_client(server.port, body_of(size), chunked=chunked)
    assert status == 413
    assert json.loads(body) == {"name": "PayloadTooLargeError", "code": "payload_too_large",
                                "message": "Request body is larger than 64 KiB."}
    assert headers["Connection"] == "close"
    assert time.monotonic() - started < 10
    assert pods_stored(server) == before
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_past_the_bound_the_connection_closes_and_memory_stays_flat(server, chunked):
    rss_before = rss_kb(server.proc.pid)
    started = time.monotonic()
    try:
        status, _, _ = post_with_http_client(server.port, body_of(50 * MB), chunked=chunked)
    except (ConnectionResetError, BrokenPipeError):
        status = None  # closed past the bound, while the client was still writing
    assert status in (None, 413)
    assert time.monotonic() - started < 20
    # Dropped as it came, never buffered: no growth anywhere near the body's size.
    assert rss_kb(server.proc.pid) - rss_before < 8 * 1024
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}


def test_exactly_64_kib_is_accepted_and_one_byte_more_is_not(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        edge = body_of(LIMIT).replace(b'"c"', b'"edge"', 1)[: LIMIT]
        edge = edge + b" " * (LIMIT - len(edge))
        r = c.post(URL, content=edge, headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["client_id"] == "edge"
        r = c.post(URL, content=edge + b" ", headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_authentication_is_decided_before_the_body_size(server):
    status, body, _ = post_with_http_client(server.port, body_of(2 * MB), key="wrong")
    assert (status, json.loads(body)["name"]) == (401, "UnauthorizedError")


def test_expect_100_continue_gets_the_413_instead_of_an_invitation(server):
    head = (f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {20 * MB}\r\nExpect: 100-continue\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head.encode())
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in answer


def test_a_kept_alive_connection_is_closed_after_an_oversized_body(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert c.get(URL).status_code == 200
        r = c.post(URL, content=body_of(200 * 1024), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.headers["Connection"] == "close"
        assert c.get(URL).status_code == 200  # on a new connection


def test_a_head_too_large_is_answered_and_read_by_a_client_that_writes_it_all_first(server):
    # 2 MB of header, far past the 32 KiB allowed: refused with 431, and the rest is
    # read and dropped, so the client finishes writing and reads the answer.
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MB) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head)
        assert_431_after_writing(s)


def assert_431_after_writing(s: socket.socket) -> None:
    """Done writing on ``s``: what the server answers, read to the end, is its 431."""
    s.shutdown(socket.SHUT_WR)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.0 431")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["name"] == "RequestHeaderFieldsTooLargeError"


def head_of(size: int) -> bytes:
    """A complete GET request head of exactly ``size`` bytes."""
    start, end = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def test_a_head_of_32_kib_is_refused_and_one_just_under_it_is_answered(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head_of(32 * 1024 - 1))
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(head_of(32 * 1024))
        assert_431_after_writing(s)


def test_unfinished_heads_hold_no_memory_beyond_the_head_limit(server):
    """300 connections each send 200 KB of a head that never ends: each is refused
    at 32 KiB, and what it sends after is dropped as it comes."""
    rss_before = rss_kb(server.proc.pid)
    socks = []
    try:
        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            socks[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
        time.sleep(1)  # for the server to read what the kernel holds
        assert rss_kb(server.proc.pid) - rss_before < 16 * 1024  # 300 heads kept would be 60 MB
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
