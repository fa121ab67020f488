"""Hostile input against a live server: never a 5xx, always the contract's JSON
error, nothing changed, and normal service afterwards."""

import json
import re

import httpx
import pytest
from dbtools import BACKENDS, query
from helpers import KEY, URL, Server, connect, exchange, new_database, read_to_end, split_answer, wait_until

from pods.api.errors import error_body

pytestmark = pytest.mark.live
SQL_INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE pod; --",
    "\" OR \"\"=\"",
    "x') UNION SELECT key_hash, 1, 1, 1, 1 FROM api_key --",
    "%' OR 1=1 --",
]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    with Server(new_database(request.param, folder, request), env={"PODS_API_KEY": KEY}, workdir=folder) as s:
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            s.existing = [c.post(URL, json={"name": f"existing {i}", "client_id": f"c{i}"}).json() for i in range(3)]
        yield s


def snapshot(server):
    # used_at is left out: the server records when keys were used, as they are.
    return (
        query(server.db, "SELECT * FROM pod ORDER BY pod_id"),
        query(server.db, "SELECT key_id, org_id, pod_id, key_hash, prefix, name, permissions, created_at,"
                         " updated_at, expires_at, revoked_at FROM api_key ORDER BY key_id"),
        query(server.db, "SELECT * FROM organization ORDER BY org_id"),
    )


@pytest.fixture
def unchanged(server):
    """Asserts, after the test, that the database is as before and the server answers."""
    before = snapshot(server)
    yield
    assert snapshot(server) == before
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        assert c.get(f"{URL}/{server.existing[0]['pod_id']}").json() == server.existing[0]


def assert_json_error(status, body, *allowed):
    """The contract's JSON error, with one of ``allowed`` (any 4xx if none given)."""
    assert status < 500, body
    assert status in allowed if allowed else 400 <= status < 500, (status, body)
    error = json.loads(body)
    assert isinstance(error["name"], str) and error["name"].endswith("Error")
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["code"], str)
    assert isinstance(error["fix"], str) and error["fix"]
    if status == 400:
        assert isinstance(error["errors"], dict) and error["errors"]


def send(server, method, path, body=None, content_type="application/json", headers=None):
    hdrs = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    if body is not None:
        hdrs["Content-Type"] = content_type
    r = httpx.request(method, server.url + path, content=body, headers=hdrs, timeout=30)
    return r.status_code, r.content


def raw(server, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes; returns (status, body) of the answer, or (0, b"") if the
    server closed without one."""
    status, _, body = raw_answer(server, data)
    return status, body


def raw_answer(server, data: bytes) -> tuple[int, bytes, bytes]:
    """Send raw bytes; returns (status, head, body) of the answer, or (0, b"", b"")
    if the server closed without one."""
    return split_answer(exchange(server.port, data, half_close=True, timeout=30))


MALFORMED_BODIES = [
    b"{", b"}", b"{'name': 'single quotes'}", b'{"name": "unterminated}', b'{"name": "x",}', b"[1, 2",
    b'{"name": NaN}', b'{"name": Infinity}', b"\x00", b'{"name": "a"}\x00', b'\x00{"name": "a"}',
    b"\xff\xfe{}", b'{"name": "\xff"}', b'{"name": "\xc3\x28"}', b"\xef\xbb\xbf{\"name\": 1}",
    b'{"name": "a"} {"name": "b"}', b"null", b"true", b"123", b'"text"', b"[]", b'[{"name": "a"}]',
    b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
]


@pytest.mark.parametrize("body", MALFORMED_BODIES, ids=range(len(MALFORMED_BODIES)))
def test_malformed_bodies(server, unchanged, body):
    assert_json_error(*send(server, "POST", URL, body), 400)


WRONG_TYPES = [None, True, 0, -1, 1.5, 10**40, [], ["a"], {}, {"a": "b"}, "", "x" * 256, "\x00", "a\u0000b",
               "\u007f", "\ud800", "\udfff"]


# null for name or client_id is the same as leaving the field out: a valid create.
FIELD_VALUES = [(field, value) for field in ("name", "client_id", "pod_id", "created_at", "colour", "")
                for value in WRONG_TYPES if not (field in ("name", "client_id") and value is None)]


@pytest.mark.parametrize("field,value", FIELD_VALUES, ids=range(len(FIELD_VALUES)))
def test_wrong_types_in_every_field(server, unchanged, field, value):
    status, body = send(server, "POST", URL, json.dumps({field: value}).encode())
    assert_json_error(status, body, 400)
    assert field in json.loads(body)["errors"]


@pytest.mark.parametrize("size", [64 * 1024 + 1, 1024 * 1024, 8 * 1024 * 1024])
def test_huge_bodies(server, unchanged, size):
    body = b'{"name": "' + b"x" * size + b'"}'
    assert_json_error(*send(server, "POST", URL, body), 413)


def test_huge_body_announced_but_never_sent(server, unchanged):
    status, body = raw(server, b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                       + KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n")
    assert_json_error(status, body, 413)


@pytest.mark.parametrize("injection", SQL_INJECTIONS)
def test_sql_injection_in_every_field_and_parameter(server, unchanged, injection):
    from urllib.parse import quote

    q = quote(injection, safe="")
    for method, path in [("GET", f"{URL}/{q}"), ("DELETE", f"{URL}/{q}")]:
        assert_json_error(*send(server, method, path), 404)
    for param in ("limit", "ascending", "page_token"):
        assert_json_error(*send(server, "GET", f"{URL}?{param}={q}"), 400)
    # Stored as plain text when valid, which would change the database: use the
    # field in a request that also fails on another field, so nothing is stored.
    for field in ("name", "client_id"):
        status, body = send(server, "POST", URL, json.dumps({field: injection, "colour": 1}).encode())
        assert_json_error(status, body, 400)
        assert set(json.loads(body)["errors"]) == {"colour"}


def test_sql_injection_strings_are_stored_as_plain_text(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        for injection in SQL_INJECTIONS:
            pod = c.post(URL, json={"name": injection, "client_id": injection}).json()
            assert (pod["name"], pod["client_id"]) == (injection, injection)
            assert c.get(f"{URL}/{pod['pod_id']}").json() == pod
            assert c.delete(f"{URL}/{pod['pod_id']}").status_code == 200


@pytest.mark.parametrize("path", [
    f"{URL}/%00", f"{URL}/a%00b", f"{URL}/%FF%FE", f"{URL}/%ED%A0%80", f"{URL}/%C0%AE%C0%AE",
    f"{URL}/../../etc/passwd", f"{URL}/%2e%2e%2f", f"{URL}/" + "é" * 1000,
])
def test_odd_and_overlong_pod_ids(server, unchanged, path):
    for method in ("GET", "DELETE"):
        assert_json_error(*send(server, method, path), 404)


def authorized_get(path: str) -> bytes:
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nConnection: close\r\n\r\n")


def test_overlong_ids_and_tokens(server, unchanged):
    # Longer than clients such as httpx agree to send, so sent as raw bytes; just
    # under the 32 KiB a request head may take, then past it.
    assert_json_error(*raw(server, authorized_get(f"{URL}/" + "x" * 30_000)), 404)
    assert_json_error(*raw(server, authorized_get(f"{URL}?page_token=" + "A" * 30_000)), 400)
    # The request target is what is too long: 414 (RFC 9110), not 431.
    assert_json_error(*raw(server, authorized_get(f"{URL}/" + "x" * 100_000)), 414)
    assert_json_error(*raw(server, authorized_get(f"{URL}?page_token=" + "A" * 100_000)), 414)


@pytest.mark.parametrize("query", [
    "limit=%00", "limit=%FF", "limit=1%00", "limit=" + "9" * 5000, "limit=1e2", "limit=0x10", "limit=-0",
    "ascending=%00", "ascending=%FF", "ascending=tru%00e",
    "page_token=%00", "page_token=%FF%FE", "page_token=" + "%2B" * 500,
])
def test_bad_query_values(server, unchanged, query):
    assert_json_error(*send(server, "GET", f"{URL}?{query}"), 400)


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
    b"GET " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
    b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
])
def test_raw_malformed_http(server, unchanged, data):
    status, body = raw(server, data)
    if status:  # the server may also just close the connection on bytes this broken
        assert_json_error(status, body)


def test_truncated_bodies_create_nothing(server, unchanged):
    body = b'{"name": "never finished"}'
    head = (b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    for cut in (0, 1, len(body) // 2, len(body) - 1):
        status, _ = raw(server, head + body[:cut])
        assert status == 0  # the request never completed: no answer, nothing done


def request_bytes(target: bytes, *headers: bytes, method=b"GET", version=b"HTTP/1.1", key=True) -> bytes:
    lines = [method + b" " + target + b" " + version, *headers, b"Connection: close"]
    if key:
        lines.append(b"Authorization: Bearer " + KEY.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize("host_lines", [
    [],
    [b"Host: a", b"Host: b"],
    [b"Host: a", b"Host: a"],
    [b"Host: a", b"Host:"],
    [b"Host:", b"Host:"],
    [b"Host: a,b"],
])
def test_http_1_1_needs_exactly_one_host(server, unchanged, host_lines):
    for target in (URL.encode(), f"{URL}/{server.existing[0]['pod_id']}".encode(), b"/healthz", b"/nowhere"):
        status, body = raw(server, request_bytes(target, *host_lines))
        assert_json_error(status, body, 400)
        assert json.loads(body)["errors"] == {"_request": ["An HTTP/1.1 request needs exactly one Host header."]}


@pytest.mark.parametrize("request_data", [
    request_bytes(URL.encode(), version=b"HTTP/1.0"),  # HTTP/1.0 has no Host rule
    request_bytes(URL.encode(), b"Host:"),  # empty, as RFC 9112 allows
    request_bytes(URL.encode(), b"Host: pods.example:8080"),
    request_bytes(b"http://pods.example" + URL.encode(), b"Host: pods.example"),
])
def test_one_host_is_fine(server, request_data):
    status, body = raw(server, request_data)
    assert status == 200, body
    assert json.loads(body)["count"] >= 3


@pytest.mark.parametrize("target", [
    b"/agent//v0/pods", b"//agent/v0/pods", b"///agent/v0/pods", b"//agent/v0/pods?limit=1", b"/agent/v0//pods/x",
    b"/agent/v0/pods/", b"/AGENT/v0/pods", b"//healthz", b"/agent/v0/pods/x/inboxes",
])
def test_no_redirects_and_one_spelling_per_route(server, unchanged, target):
    for method in (b"GET", b"POST", b"DELETE"):
        status, head, body = raw_answer(server, request_bytes(target, b"Host: evil.example", method=method))
        assert status == 404, (method, target, body)
        assert json.loads(body) == error_body("not_found")
        assert b"location:" not in head.lower()


def test_paths_are_logged_as_sent(server):
    raw(server, request_bytes(b"//agent/v0/pods", b"Host: x"))
    # Written by the log's own thread a moment after the answer.
    assert wait_until(lambda: " GET //agent/v0/pods 404 " in server.stderr, timeout=5)


@pytest.mark.parametrize("segment", ["%0A", "a%0Ab", "%0D%0A", "%00", "%FF", "%ED%A0%80", "%09", "..", "%2E%2E"])
def test_any_one_segment_is_an_authenticated_pod_id(server, unchanged, segment):
    # Raw bytes: clients resolve ".." segments before sending.
    target = f"{URL}/{segment}".encode()
    for method in (b"GET", b"DELETE"):
        status, body = raw(server, request_bytes(target, b"Host: x", method=method, key=False))
        assert status == 401, (method, segment)
        status, body = raw(server, request_bytes(target, b"Host: x", method=method))
        assert (status, json.loads(body)["message"]) == (404, "Pod not found."), (method, segment)


# -- the request line and framing (RFC 9112) -------------------------------------------


def error_of(body: bytes) -> list:
    return json.loads(body)["errors"]["_request"]


@pytest.mark.parametrize("target", [b"agent/v0/pods?limit=1", b"agent/v0/pods", b"healthz", b"*",
                                    b"pods.example:80", b"ftp://pods.example/agent/v0/pods"])
def test_a_target_that_is_neither_a_path_nor_an_absolute_url_is_400(server, unchanged, target):
    for method in (b"GET", b"POST", b"DELETE"):
        status, body = raw(server, request_bytes(target, b"Host: x", method=method))
        assert_json_error(status, body, 400)
        assert error_of(body) == ['The request target must be a path starting with "/", or an absolute http URL.']


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/9.9", b"HTTP/0.9"])
def test_an_http_version_other_than_1_is_505(server, unchanged, version):
    status, head, body = raw_answer(server, request_bytes(URL.encode(), b"Host: x", version=version))
    assert status == 505
    assert json.loads(body) == {"name": "HttpVersionNotSupportedError", "message": "HTTP Version Not Supported.",
                                "code": "http_version_not_supported",
                                "fix": "Send the request as HTTP/1.1 (or HTTP/1.0), in plain text."}
    assert b"\r\nConnection: close" in head


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/1.9"])
def test_a_later_http_1_version_is_read_as_1_1(server, unchanged, version):
    for target in (URL.encode(), b"/healthz"):
        status, body = raw(server, request_bytes(target, version=version))  # no Host: as in 1.1, refused
        assert_json_error(status, body, 400)
        assert error_of(body) == ["An HTTP/1.1 request needs exactly one Host header."]
    status, head, body = raw_answer(server, request_bytes(URL.encode(), b"Host: x", version=version))
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["count"] >= 3


def test_a_request_line_without_a_version_is_400(server, unchanged):
    status, body = raw(server, b"GET /healthz\r\n\r\n")
    assert_json_error(status, body, 400)
    assert error_of(body) == ["The request line has no HTTP version."]


@pytest.mark.parametrize("lines", [(b"Host: a", b" b"), (b"Host: x", b"X-Note: a", b"\tb"), (b"Host:", b" x")])
def test_a_folded_header_line_is_400(server, unchanged, lines):
    status, body = raw(server, request_bytes(URL.encode(), *lines))
    assert_json_error(status, body, 400)
    assert error_of(body) == ["A header line may not be folded onto the next."]


def chunked_create(version: bytes, *extra: bytes) -> bytes:
    body = b'{"name": "framed", "client_id": "framing"}'
    chunked = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    return (b"POST " + URL.encode() + b" " + version + b"\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n" + b"".join(extra)
            + b"\r\n" + chunked)


def test_http_1_0_with_a_transfer_encoding_is_400_and_creates_nothing(server, unchanged):
    # waitress reads Transfer-Encoding in HTTP/1.1 only: this body would be read as
    # absent, and an empty create made again and again.
    status, head, body = raw_answer(server, chunked_create(b"HTTP/1.0"))
    assert_json_error(status, body, 400)
    assert error_of(body) == ["An HTTP/1.0 request may not have a Transfer-Encoding."]
    assert b"\r\nConnection: close" in head


def test_content_length_with_transfer_encoding_is_400_and_ends_the_connection(server, unchanged):
    pipelined = chunked_create(b"HTTP/1.1", b"Content-Length: 5\r\n") + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server.port, timeout=30) as s:
        s.sendall(pipelined)
        answer = read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 400 ")
    # The request after it is not answered: one status line (a fix may quote "HTTP/1.1").
    assert len(re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", answer)) == 1, answer
    body = answer.partition(b"\r\n\r\n")[2]
    assert error_of(body) == ["A request may not have both Content-Length and Transfer-Encoding."]
