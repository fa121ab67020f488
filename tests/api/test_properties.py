"""Property-based tests: the create and list rules hold for any input hypothesis finds."""

import re
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


URL = "/agent/v0/pods"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Examples share one app: every example uses an organization of its own, and
# every count is relative to the state before it.
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON has no NaN or Infinity (RFC 8259): bodies holding them are malformed, tested in test_create.py.
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=300)
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=5)
# Strings near the rules' edges: empty, 255/256 long, control characters, lone surrogates.
edgy_text = st.one_of(
    st.text(min_size=0, max_size=3),
    st.text(min_size=254, max_size=257),
    st.text(alphabet=st.characters(codec=None, categories=None), max_size=20),
    st.sampled_from(["\x00", "a\x1fb", "\x7f", "\ud800", "ok\udfff", "é" * 255, "🙂" * 255, "🙂" * 256]),
)
field_values = st.one_of(edgy_text, json_values)
bodies = st.dictionaries(
    st.sampled_from(["name", "client_id"]) | st.text(max_size=8),
    field_values,
    max_size=4,
)


def valid_text(value) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or CONTROL.search(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def count(sql):
    return sql("SELECT count(*) FROM pod")[0][0]


@SETTINGS
@given(body=bodies)
def test_create_accepts_exactly_the_valid_bodies(client, make_key, sql, body):
    headers, _ = make_key(f"org-{uuid.uuid4()}")  # a client_id never seen before in this organization
    bad = {k for k, v in body.items() if k not in ("name", "client_id") or (v is not None and not valid_text(v))}
    before = count(sql)
    r = client.post(URL, json=body, headers=headers)
    if bad:
        assert r.status_code == 400, (body, r.json)
        assert set(r.json["errors"]) == bad
        assert count(sql) == before
        return
    assert r.status_code == 200, (body, r.json)
    pod = r.json
    name, client_id = body.get("name"), body.get("client_id")
    assert pod["client_id"] == client_id
    assert pod["name"] == (name or client_id or pod["pod_id"])
    assert pod["updated_at"] == pod["created_at"]
    replay = client.post(URL, json=body, headers=headers)
    if client_id is None:  # no key to be idempotent on: a second pod
        assert replay.json["pod_id"] != pod["pod_id"] and count(sql) == before + 2
    else:  # the same pod, unchanged
        assert replay.json == pod and count(sql) == before + 1


operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(min_value=0, max_value=5)),  # few timestamps: many ties
        st.tuples(st.just("delete"), st.integers(min_value=0, max_value=10_000)),
    ),
    min_size=1,
    max_size=40,
)


@SETTINGS
@given(ops=operations, limit=st.integers(min_value=1, max_value=12), ascending=st.booleans())
def test_paging_visits_exactly_the_pods_in_order(client, make_key, clock, ops, limit, ascending):
    headers, _ = make_key(f"org-{uuid.uuid4()}")
    model = {}
    for op, arg in ops:
        if op == "create":
            clock.set(f"2026-01-01T00:00:0{arg}.000000Z")
            pod = client.post(URL, json={}, headers=headers).json
            model[pod["pod_id"]] = pod
        elif model:
            pod_id = sorted(model)[arg % len(model)]
            assert client.delete(f"{URL}/{pod_id}", headers=headers).status_code == 200
            del model[pod_id]
    expected = sorted(model.values(), key=lambda p: (p["created_at"], p["pod_id"]), reverse=not ascending)

    seen, params, pages = [], {"limit": limit, "ascending": str(ascending).lower()}, 0
    while True:
        page = client.get(URL, query_string=params, headers=headers).json
        pages += 1
        assert page["count"] == len(page["pods"]) <= limit
        seen += page["pods"]
        if "next_page_token" not in page:
            break
        assert page["count"] == limit
        params["page_token"] = page["next_page_token"]
    assert seen == expected
    assert pages == max(1, -(-len(expected) // limit))  # no empty trailing page
