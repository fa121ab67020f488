"""Get and delete one pod."""

import pytest
from helpers import URL

from pods.api.errors import error_body

NOT_FOUND = error_body("pod_not_found")


def test_get_returns_the_created_pod(client, headers, create):
    pod = create(name="n", client_id="c")
    r = client.get(f"{URL}/{pod['pod_id']}", headers=headers)
    assert r.status_code == 200
    assert r.json == pod


def test_get_answers_compact_json_in_the_documented_key_order(client, headers, create):
    pod = create(name="n", client_id=None)
    r = client.get(f"{URL}/{pod['pod_id']}", headers=headers)
    assert r.content_type == "application/json"
    assert "Set-Cookie" not in r.headers  # stateless: no session
    assert r.data == (
        f'{{"pod_id":"{pod["pod_id"]}","name":"n","client_id":null,'
        f'"created_at":"{pod["created_at"]}","updated_at":"{pod["created_at"]}"}}\n'
    ).encode()


@pytest.mark.parametrize(
    "pod_id",
    [
        "does-not-exist",
        "00000000-0000-0000-0000-000000000000",
        "x" * 5000,
        "é🙂",
        "a%00b",  # "a/b/c" is no route: tests/api/test_routing.py
        "0%0A",  # werkzeug's path converter stops at a newline: found by fuzzing
        "%0D%0A%09",
        "%2e%2e",
        "' OR '1'='1",
        "1; DROP TABLE pod; --",
    ],
)
def test_unknown_pod_is_404_for_get_and_delete(client, headers, create, sql, pod_id):
    create(name="keep")
    for method in (client.get, client.delete):
        r = method(f"{URL}/{pod_id}", headers=headers)
        assert r.status_code == 404
        assert r.json == NOT_FOUND
    assert sql("SELECT count(*) FROM pod") == [(1,)]


def test_delete_is_200_with_an_empty_body_and_the_pod_is_gone(client, headers, create, sql):
    pod = create(name="doomed")
    kept = create(name="kept")
    r = client.delete(f"{URL}/{pod['pod_id']}", headers=headers)
    assert r.status_code == 200
    assert r.data == b""
    assert r.headers["Content-Length"] == "0"
    r = client.get(f"{URL}/{pod['pod_id']}", headers=headers)
    assert (r.status_code, r.json) == (404, NOT_FOUND)
    r = client.delete(f"{URL}/{pod['pod_id']}", headers=headers)
    assert (r.status_code, r.json) == (404, NOT_FOUND)
    assert client.get(URL, headers=headers).json["pods"] == [kept]
    assert sql("SELECT pod_id FROM pod") == [(kept["pod_id"],)]


def test_another_organizations_pod_is_404_and_untouched(client, make_key, create, sql):
    a, _ = make_key("a")
    b, _ = make_key("b")
    pod = create(hdrs=a, name="a's")
    for method in (client.get, client.delete):
        r = method(f"{URL}/{pod['pod_id']}", headers=b)
        assert (r.status_code, r.json) == (404, NOT_FOUND)
    assert client.get(f"{URL}/{pod['pod_id']}", headers=a).json == pod
    assert sql("SELECT count(*) FROM pod") == [(1,)]


def statements_run(app, backend, monkeypatch) -> list:
    """The SQL statements the app runs from now on, in this thread, as they are sent."""
    from helpers import storage_of

    sent = []
    if backend == "sqlite":
        storage_of(app).connection().set_trace_callback(sent.append)
    else:
        import psycopg

        execute = psycopg.Connection.execute
        monkeypatch.setattr(psycopg.Connection, "execute",
                            lambda conn, query, *args, **kwargs: sent.append(query) or execute(conn, query, *args, **kwargs))
    return sent


@pytest.mark.parametrize("found", [True, False])
def test_a_get_reads_its_key_and_its_pod_in_one_statement(app, client, headers, create, backend, monkeypatch, found):
    pod = create(name="n")
    pod_id = pod["pod_id"] if found else "00000000-0000-0000-0000-000000000000"
    client.get(f"{URL}/{pod['pod_id']}", headers=headers)  # connections made, key use noted
    sent = statements_run(app, backend, monkeypatch)
    r = client.get(f"{URL}/{pod_id}", headers=headers)
    assert (r.status_code, r.json) == ((200, pod) if found else (404, NOT_FOUND))
    assert len(sent) == 1 and "LEFT JOIN pod" in sent[0]


def test_a_pod_dumps_as_marshmallow_dumps_it_field_by_field():
    """PodSchema builds a row's dict in one go (schemas.RowSchema): the same keys, in
    the same order, with the same values as marshmallow's own field-by-field dump,
    for one pod, a page of them, and a schema told to dump only some fields."""
    from marshmallow import Schema

    from pods.api.schemas import PodListSchema, PodSchema

    rows = [{"pod_id": f"p{i}", "name": f"pod {i}", "client_id": None if i % 2 else f"c{i}",
             "created_at": f"2026-01-01T00:00:0{i}.000000Z"} for i in range(3)]
    for schema in (PodSchema(), PodSchema(only=("pod_id", "updated_at")), PodSchema(exclude=("client_id",))):
        for obj, many in ((rows[0], False), (rows, True)):
            fast = schema.dump(obj, many=many)
            generic = Schema._serialize(schema, obj, many=many)
            assert fast == generic
            assert [list(d) for d in (fast if many else [fast])] == [list(d) for d in (generic if many else [generic])]
    page = PodListSchema().dump({"count": 3, "limit": 10, "next_page_token": None, "pods": rows})
    assert page["pods"][1] == {"pod_id": "p1", "name": "pod 1", "client_id": None,
                               "created_at": "2026-01-01T00:00:01.000000Z", "updated_at": "2026-01-01T00:00:01.000000Z"}


def test_a_pod_schema_told_later_to_dump_less_dumps_less():
    """marshmallow makes a schema's fields anew when a Nested field narrows a schema
    instance (only / exclude): RowSchema follows, leaking no field left out."""
    from marshmallow import Schema, fields

    from pods.api.schemas import PodSchema

    row = {"pod_id": "p1", "name": "pod 1", "client_id": None, "created_at": "2026-01-01T00:00:00.000000Z"}
    shared = PodSchema()
    assert set(shared.dump(row)) == {"pod_id", "name", "client_id", "created_at", "updated_at"}

    class Outer(Schema):
        pod = fields.Nested(shared, only=("pod_id",))
        others = fields.Nested(shared, exclude=("name", "client_id"), many=True)

    assert Outer().dump({"pod": row, "others": [row]}) == {
        "pod": {"pod_id": "p1"},
        "others": [{"pod_id": "p1", "created_at": row["created_at"], "updated_at": row["created_at"]}],
    }
    assert set(shared.dump(row)) == {"pod_id", "name", "client_id", "created_at", "updated_at"}
