import json
import re
import threading

import pytest
from conftest import storage_of

from pods import close_app, create_app

URL = "/agent/v0/pods"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_create_returns_the_pod_and_stores_it(client, headers, sql):
    r = client.post(URL, json={"name": "Acme", "client_id": "acme-1"}, headers=headers)
    assert r.status_code == 200
    pod = r.json
    assert set(pod) == {"pod_id", "name", "client_id", "created_at", "updated_at"}
    assert (pod["name"], pod["client_id"]) == ("Acme", "acme-1")
    assert TIMESTAMP.match(pod["created_at"])
    assert pod["updated_at"] == pod["created_at"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", pod["pod_id"])
    assert sql("SELECT pod_id, name, client_id, created_at FROM pod") == [
        (pod["pod_id"], "Acme", "acme-1", pod["created_at"])
    ]


@pytest.mark.parametrize(
    "body,expected_name",
    [
        ({"client_id": "c-1"}, "c-1"),
        ({"client_id": "c-1", "name": None}, "c-1"),
        ({"name": "Only a name"}, "Only a name"),
    ],
)
def test_name_defaults_to_client_id(client, headers, body, expected_name):
    r = client.post(URL, json=body, headers=headers)
    assert r.status_code == 200
    assert r.json["name"] == expected_name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {}},
        {"json": {"name": None, "client_id": None}},
        {},  # no body at all
        {"data": b"", "content_type": "text/plain"},  # an empty body is {} whatever its type
    ],
)
def test_without_fields_name_defaults_to_pod_id(client, headers, sql, kwargs):
    r = client.post(URL, headers=headers, **kwargs)
    assert r.status_code == 200
    assert r.json["name"] == r.json["pod_id"]
    assert r.json["client_id"] is None
    assert sql("SELECT count(*) FROM pod") == [(1,)]


def assert_rejected(r, sql, *fields):
    assert r.status_code == 400
    assert r.json["name"] == "ValidationError"
    assert r.json["code"] == "validation_error"
    assert r.json["message"]
    assert set(r.json["errors"]) == set(fields), r.json
    for messages in r.json["errors"].values():
        assert messages and all(isinstance(m, str) for m in messages)
    assert sql("SELECT count(*) FROM pod") == [(0,)]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"client_id": ""}, "client_id"),
        ({"client_id": "x" * 256}, "client_id"),
        ({"name": 5}, "name"),
        ({"name": True}, "name"),
        ({"name": ["a"]}, "name"),
        ({"name": {"a": 1}}, "name"),
        ({"client_id": 1.5}, "client_id"),
        ({"name": "tab\there"}, "name"),
        ({"name": "nul\x00"}, "name"),
        ({"name": "del\x7f"}, "name"),
        ({"client_id": "line\nbreak"}, "client_id"),
        ({"colour": "red"}, "colour"),
        ({"pod_id": "mine"}, "pod_id"),
        ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
    ],
)
def test_each_bad_field_is_named(client, headers, sql, body, field):
    assert_rejected(client.post(URL, json=body, headers=headers), sql, field)


def test_boundary_lengths_are_accepted(client, headers):
    r = client.post(URL, json={"name": "x" * 255, "client_id": "y"}, headers=headers)
    assert r.status_code == 200
    assert len(r.json["name"]) == 255
    # Length counts characters, not bytes.
    r = client.post(URL, json={"name": "é" * 255}, headers=headers)
    assert r.status_code == 200
    assert r.json["name"] == "é" * 255


def test_every_offending_field_is_named_at_once(client, headers, sql):
    r = client.post(URL, json={"name": "", "client_id": 7, "colour": 1, "size": 2}, headers=headers)
    assert_rejected(r, sql, "name", "client_id", "colour", "size")


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b'{"name": "a",}',
        b"\xff\xfe\xfa",  # not UTF-8
        b'{"name": "\\ud800"}',  # a lone surrogate cannot be stored as UTF-8
        b"[" * 30_000 + b"]" * 30_000,  # valid, but nested deep enough to exhaust recursion
    ],
)
def test_body_that_is_not_usable_json_is_rejected(client, headers, sql, raw):
    r = client.post(URL, data=raw, content_type="application/json", headers=headers)
    assert r.status_code == 400
    assert r.json["name"] == "ValidationError"
    assert r.json["errors"]
    assert sql("SELECT count(*) FROM pod") == [(0,)]


@pytest.mark.parametrize("value", ["[]", "[1]", '"name"', "3", "null", "true"])
def test_json_that_is_not_an_object_is_rejected(client, headers, sql, value):
    r = client.post(URL, data=value, content_type="application/json", headers=headers)
    assert_rejected(r, sql, "_schema")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_non_json_content_type_is_415(client, headers, sql, content_type):
    r = client.post(URL, data='{"name": "a"}', content_type=content_type, headers=headers)
    assert r.status_code == 415
    assert r.json["name"] == "UnsupportedMediaTypeError"
    assert r.json["code"] == "unsupported_media_type"
    assert sql("SELECT count(*) FROM pod") == [(0,)]


def test_json_with_charset_is_accepted(client, headers):
    r = client.post(URL, data='{"name": "a"}', content_type="application/json; charset=utf-8", headers=headers)
    assert r.status_code == 200
    assert r.json["name"] == "a"


def test_body_over_64_kib_is_413_and_64_kib_exactly_is_fine(client, headers, sql):
    doc = json.dumps({"name": "edge"}).encode()
    exact = doc + b" " * (64 * 1024 - len(doc))  # JSON allows trailing whitespace
    r = client.post(URL, data=exact, content_type="application/json", headers=headers)
    assert r.status_code == 200
    assert r.json["name"] == "edge"
    r = client.post(URL, data=exact + b" ", content_type="application/json", headers=headers)
    assert r.status_code == 413
    assert r.json["name"] == "PayloadTooLargeError"
    assert r.json["code"] == "payload_too_large"
    assert sql("SELECT count(*) FROM pod") == [(1,)]


def test_same_client_id_returns_the_same_pod_unchanged(client, headers, sql):
    first = client.post(URL, json={"client_id": "c", "name": "first"}, headers=headers).json
    r = client.post(URL, json={"client_id": "c", "name": "second"}, headers=headers)
    assert r.status_code == 200
    assert r.json == first
    r = client.post(URL, json={"client_id": "c"}, headers=headers)
    assert r.json == first
    assert sql("SELECT count(*) FROM pod") == [(1,)]


def test_same_client_id_in_another_organization_is_unrelated(client, make_key, sql):
    a, _ = make_key("a")
    b, _ = make_key("b")
    pod_a = client.post(URL, json={"client_id": "shared", "name": "A"}, headers=a).json
    pod_b = client.post(URL, json={"client_id": "shared", "name": "B"}, headers=b).json
    assert pod_a["pod_id"] != pod_b["pod_id"]
    assert (pod_a["name"], pod_b["name"]) == ("A", "B")
    assert sql("SELECT count(*) FROM pod") == [(2,)]


def test_client_id_is_free_again_after_delete(client, headers):
    first = client.post(URL, json={"client_id": "c"}, headers=headers).json
    assert client.delete(f"{URL}/{first['pod_id']}", headers=headers).status_code == 200
    second = client.post(URL, json={"client_id": "c"}, headers=headers).json
    assert second["pod_id"] != first["pod_id"]
    assert client.get(f"{URL}/{second['pod_id']}", headers=headers).json == second


def test_concurrent_creates_with_one_client_id_make_one_pod(database, headers, sql):
    threads, answers = 16, []
    barrier = threading.Barrier(threads)
    app = create_app({"TESTING": True, "DB": database, "THREADS": threads})  # a connection for each

    def create():
        barrier.wait()
        r = app.test_client().post(URL, json={"client_id": "race", "name": "n"}, headers=headers)
        answers.append((r.status_code, r.json))
        storage_of(app).end_thread()

    workers = [threading.Thread(target=create) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    close_app(app)
    assert len(answers) == threads
    assert {status for status, _ in answers} == {200}
    assert len({json.dumps(body, sort_keys=True) for _, body in answers}) == 1
    assert sql("SELECT count(*) FROM pod WHERE client_id = 'race'") == [(1,)]


@pytest.mark.parametrize(
    "raw,key",
    [
        (b'{"client_id": "a", "client_id": "b"}', "client_id"),
        (b'{"client_id": "a", "name": "n", "client_id": "a"}', "client_id"),  # the same value twice, too
        (b'{"name": "n", "name": null}', "name"),
        (b'{"colour": 1, "colour": 2}', "colour"),
        (b'{"": 1, "": 2}', ""),
        (b'{"name": {"a": 1, "a": 2}}', "a"),  # anywhere in the document
        (b'{"name": [{"x": 1}, {"x": 1, "x": 2}]}', "x"),
        (b'{"client_id": "a", "client\\u005fid": "b"}', "client_id"),  # equal once unescaped
    ],
)
def test_a_duplicated_key_is_400_naming_it(client, headers, sql, raw, key):
    r = client.post(URL, data=raw, content_type="application/json", headers=headers)
    assert_rejected(r, sql, "_schema")
    assert r.json["errors"]["_schema"] == [f"Duplicate key {json.dumps(key)}."]


@pytest.mark.parametrize(
    "raw",
    [
        b'\xef\xbb\xbf{"name": "bom"}',  # a UTF-8 byte order mark
        '{"name": "utf16"}'.encode("utf-16"),  # with its byte order mark
        '{"name": "utf16"}'.encode("utf-16-le"),
        '{"name": "utf16"}'.encode("utf-16-be"),
        '{"name": "utf32"}'.encode("utf-32"),
        '{"name": "utf32"}'.encode("utf-32-le"),
        '{"name": "latin1 é"}'.encode("latin-1"),
        b'{"name": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8: not UTF-8
        b'{"name": "\xc0\xae"}',  # an overlong encoding
        b'{"name": NaN}',  # not JSON (RFC 8259), though Python's parser takes it
        b'{"name": "a", "client_id": -Infinity}',
    ],
)
def test_body_must_be_utf8_json(client, headers, sql, raw):
    r = client.post(URL, data=raw, content_type="application/json", headers=headers)
    assert_rejected(r, sql, "_schema")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/problem+json",
        "application/vnd.acme+json",
        "text/json",
        "application/json-patch+json",
        "application/jsonx",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "application/json; charset=utf8",
        "application/json; charset=utf-8; format=flowed",
        "application/json; foo=bar",
        "application/json; charset=utf-8; charset=utf-8",
        "application/json; charset=",
        "application/json charset=utf-8",
        "application/json; charset = utf-8",
        "application/json;",
        "application/*",
        "*/*",
        "",
    ],
)
def test_content_type_other_than_plain_json_is_415(client, headers, sql, content_type):
    r = client.post(URL, data='{"name": "a"}', headers={**headers, "Content-Type": content_type})
    assert r.status_code == 415, content_type
    assert r.json["name"] == "UnsupportedMediaTypeError"
    assert sql("SELECT count(*) FROM pod") == [(0,)]


def test_a_body_without_content_type_is_415(client, headers, sql):
    r = client.post(URL, data='{"name": "a"}', headers=headers)
    assert "Content-Type" not in r.request.headers
    assert r.status_code == 415
    assert sql("SELECT count(*) FROM pod") == [(0,)]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "APPLICATION/JSON",
        "Application/Json",
        "application/json;charset=utf-8",
        "application/json; charset=UTF-8",
        "application/json; CHARSET=Utf-8",
        'application/json; charset="utf-8"',
        "application/json ; charset=utf-8",
        "application/json;\tcharset=utf-8",
    ],
)
def test_json_content_types_that_are_accepted(client, headers, content_type):
    r = client.post(URL, data='{"name": "a"}', headers={**headers, "Content-Type": content_type})
    assert r.status_code == 200, (content_type, r.json)
    assert r.json["name"] == "a"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "x-gzip", "identity, gzip", "compress", ""])
@pytest.mark.parametrize("body", [b'{"name": "a"}', b""])
def test_a_content_encoding_other_than_identity_is_415(client, headers, sql, encoding, body):
    hdrs = {**headers, "Content-Type": "application/json", "Content-Encoding": encoding}
    r = client.post(URL, data=body, headers=hdrs)
    assert r.status_code == 415, encoding
    assert r.json["name"] == "UnsupportedMediaTypeError"
    assert r.json["message"] == "Content-Encoding is not supported: send the body as it is (identity)."
    assert sql("SELECT count(*) FROM pod") == [(0,)]


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY"])
def test_identity_content_encoding_is_accepted(client, headers, encoding):
    hdrs = {**headers, "Content-Type": "application/json", "Content-Encoding": encoding}
    r = client.post(URL, data='{"name": "a"}', headers=hdrs)
    assert r.status_code == 200
    assert r.json["name"] == "a"
