import itertools
import string

import pytest


URL = "/agent/v0/pods"


@pytest.fixture
def many(create, clock):
    """25 pods in 5 groups that share a timestamp: ties must be broken by pod_id."""
    pods = []
    for group in range(5):
        clock.set(f"2026-01-01T00:00:0{group}.000000Z")
        pods += [create(name=f"g{group}-{i}") for i in range(5)]
    return sorted(pods, key=lambda p: (p["created_at"], p["pod_id"]))


def walk(client, headers, **params):
    """Follow next_page_token to the end; returns (pods, pages)."""
    seen, pages = [], []
    query = dict(params)
    while True:
        r = client.get(URL, query_string=query, headers=headers)
        assert r.status_code == 200, r.json
        page = r.json
        assert page["count"] == len(page["pods"])
        assert page["limit"] == params.get("limit", 10)
        pages.append(page)
        seen += page["pods"]
        if "next_page_token" not in page:
            return seen, pages
        query = {**params, "page_token": page["next_page_token"]}


def test_empty_list(client, headers):
    r = client.get(URL, headers=headers)
    assert r.status_code == 200
    assert r.json == {"count": 0, "limit": 10, "pods": []}


def test_default_is_ten_newest_first(client, headers, many):
    r = client.get(URL, headers=headers)
    assert r.status_code == 200
    assert r.json["count"] == 10
    assert r.json["limit"] == 10
    assert r.json["pods"] == many[::-1][:10]
    assert "next_page_token" in r.json


@pytest.mark.parametrize("limit", [1, 3, 5, 7, 25, 100])
def test_walk_descending_visits_each_pod_once_in_order(client, headers, many, limit):
    seen, pages = walk(client, headers, limit=limit)
    assert seen == many[::-1]
    assert all(p["count"] == limit for p in pages[:-1])
    assert 1 <= pages[-1]["count"] <= limit  # never an empty trailing page


@pytest.mark.parametrize("limit", [1, 4, 5, 10])
def test_walk_ascending_visits_each_pod_once_in_order(client, headers, many, limit):
    seen, _ = walk(client, headers, limit=limit, ascending="true")
    assert seen == many


def test_a_full_last_page_has_no_token(client, headers, many):
    seen, pages = walk(client, headers, limit=5)
    assert len(pages) == 5
    assert [p["count"] for p in pages] == [5] * 5
    assert "next_page_token" not in pages[-1]


@pytest.mark.parametrize("value,ascending", [("true", True), ("TRUE", True), ("True", True), ("1", True),
                                             ("false", False), ("FALSE", False), ("0", False)])
def test_ascending_values(client, headers, many, value, ascending):
    r = client.get(URL, query_string={"ascending": value, "limit": 100}, headers=headers)
    assert r.status_code == 200
    assert r.json["pods"] == (many if ascending else many[::-1])


def test_token_carries_its_direction(client, headers, many):
    first = client.get(URL, query_string={"ascending": "true", "limit": 5}, headers=headers).json
    r = client.get(URL, query_string={"page_token": first["next_page_token"], "limit": 5}, headers=headers)
    assert r.status_code == 200
    assert r.json["pods"] == many[5:10]
    r = client.get(URL, query_string={"page_token": first["next_page_token"], "ascending": "false"}, headers=headers)
    assert r.status_code == 400
    assert set(r.json["errors"]) == {"page_token"}


def test_unknown_query_parameters_are_ignored(client, headers, many):
    r = client.get(URL, query_string={"limit": 2, "colour": "red", "offset": 5}, headers=headers)
    assert r.status_code == 200
    assert r.json["pods"] == many[::-1][:2]


@pytest.mark.parametrize(
    "params,bad",
    [
        ({"limit": "0"}, {"limit"}),
        ({"limit": "101"}, {"limit"}),
        ({"limit": "-1"}, {"limit"}),
        ({"limit": "abc"}, {"limit"}),
        ({"limit": "1.5"}, {"limit"}),
        ({"limit": ""}, {"limit"}),
        ({"limit": "99999999999999999999999"}, {"limit"}),
        ({"ascending": "yes"}, {"ascending"}),
        ({"ascending": "2"}, {"ascending"}),
        ({"ascending": ""}, {"ascending"}),
        ({"page_token": "garbage"}, {"page_token"}),
        ({"page_token": ""}, {"page_token"}),
        ({"page_token": "é"}, {"page_token"}),
        ({"page_token": "A" * 10_000}, {"page_token"}),
        ({"page_token": "' OR 1=1 --"}, {"page_token"}),
        ({"limit": "0", "ascending": "maybe", "page_token": "x"}, {"limit", "ascending", "page_token"}),
    ],
)
def test_bad_parameters_are_400_naming_each(client, headers, many, params, bad):
    r = client.get(URL, query_string=params, headers=headers)
    assert r.status_code == 400
    assert r.json["name"] == "ValidationError"
    assert set(r.json["errors"]) == bad


BASE64URL = string.ascii_letters + string.digits + "-_"


def edits(token):
    """Truncations, extensions and single-character edits of a token. The last
    character gets every other letter: some differ only in bits base64 ignores."""
    yield token[:-1]
    yield token[:-4]
    yield token[: len(token) // 2]
    yield token + "A"
    yield token + "=="
    for i in (0, 5, len(token) // 2):
        yield token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    for c in BASE64URL.replace(token[-1], ""):
        yield token[:-1] + c


def test_edited_or_truncated_tokens_are_400(client, headers, many):
    token = client.get(URL, query_string={"limit": 3}, headers=headers).json["next_page_token"]
    for bad in edits(token):
        r = client.get(URL, query_string={"page_token": bad, "limit": 3}, headers=headers)
        assert r.status_code == 400, bad
        assert set(r.json["errors"]) == {"page_token"}


def test_another_organizations_token_is_400(client, make_key, create):
    a, _ = make_key("a")
    b, _ = make_key("b")
    for i in range(3):
        create(hdrs=a, name=f"a{i}")
    token = client.get(URL, query_string={"limit": 1}, headers=a).json["next_page_token"]
    r = client.get(URL, query_string={"limit": 1, "page_token": token}, headers=b)
    assert r.status_code == 400
    assert set(r.json["errors"]) == {"page_token"}


def test_lists_only_the_callers_organization(client, make_key, create):
    a, _ = make_key("a")
    b, _ = make_key("b")
    mine = [create(hdrs=a, name=f"a{i}")["pod_id"] for i in range(3)]
    create(hdrs=b, name="b0")
    seen, _ = walk(client, a, limit=2)
    assert sorted(p["pod_id"] for p in seen) == sorted(mine)


def test_paging_while_pods_come_and_go_sees_every_stable_pod_once(client, headers, create, clock):
    stable = []
    for i in range(30):
        clock.set(f"2026-01-01T00:00:{i:02d}.000000Z")
        stable.append(create(name=f"s{i}"))
    churn = itertools.count()
    seen, query = [], {"limit": 4}
    while True:
        page = client.get(URL, query_string=query, headers=headers).json
        seen += page["pods"]
        # Between pages: new pods at both ends and in the middle, and one deleted.
        for ts in ("2025-01-01T00:00:00.000000Z", "2026-01-01T00:00:15.000000Z", "2027-01-01T00:00:00.000000Z"):
            clock.set(ts)
            extra = create(name=f"x{next(churn)}")
        assert client.delete(f"{URL}/{extra['pod_id']}", headers=headers).status_code == 200
        if "next_page_token" not in page:
            break
        query["page_token"] = page["next_page_token"]
    ids = [p["pod_id"] for p in seen]
    assert len(ids) == len(set(ids))
    stable_seen = [p for p in seen if p["name"].startswith("s")]
    assert stable_seen == stable[::-1]
    keys = [(p["created_at"], p["pod_id"]) for p in seen]
    assert keys == sorted(keys, reverse=True)


# Each of these is a number to int(), which marshmallow's Integer uses: a sign,
# blanks (ASCII or Unicode), underscores, digits of other scripts, leading zeros.
NOT_ASCII_DIGITS = ["1_0", "%205", "5%20", "%095", "%0A5", "%2B5", "%C2%A05", "%D9%A5", "%EF%BC%95",
                    "%F0%9D%9F%93", "05", "010", "0010", "00", "1%2C0", "1.0", "0x5", "%E2%80%8B5"]


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
def test_limit_is_ascii_digits_only(client, headers, many, value):
    r = client.get(URL, query_string=f"limit={value}", headers=headers)
    assert r.status_code == 400, r.json
    message = "Not a valid integer: use the digits 0-9, with no sign, spaces or leading zeros."
    assert r.json["errors"] == {"limit": [message]}


@pytest.mark.parametrize("value,limit", [("1", 1), ("9", 9), ("10", 10), ("100", 100)])
def test_limit_in_plain_digits_is_accepted(client, headers, many, value, limit):
    r = client.get(URL, query_string=f"limit={value}", headers=headers)
    assert r.status_code == 200
    assert (r.json["limit"], r.json["count"]) == (limit, min(limit, len(many)))


@pytest.mark.parametrize("value", ["0", "101", "1000", "9" * 18, "9" * 19, "9" * 5000])
def test_limit_out_of_range_is_400(client, headers, many, value):
    r = client.get(URL, query_string=f"limit={value}", headers=headers)
    assert r.status_code == 400
    assert set(r.json["errors"]) == {"limit"}


def test_a_repeated_parameter_is_400_naming_it(client, headers, many):
    token = client.get(URL, query_string={"limit": 3}, headers=headers).json["next_page_token"]
    for query, bad in [
        ("limit=2&limit=2", {"limit"}),
        ("limit=2&limit=3", {"limit"}),
        ("limit=2&limit=", {"limit"}),
        ("ascending=true&ascending=false", {"ascending"}),
        ("ascending=true&ascending=true", {"ascending"}),
        (f"page_token={token}&page_token={token}", {"page_token"}),
        (f"limit=3&page_token={token}&ascending=0&limit=3&ascending=0&page_token={token}",
         {"limit", "ascending", "page_token"}),
    ]:
        r = client.get(URL, query_string=query, headers=headers)
        assert r.status_code == 400, query
        assert r.json["errors"] == {name: ["Given more than once."] for name in bad}, query


def test_a_repeated_parameter_is_named_beside_other_bad_values(client, headers, many):
    r = client.get(URL, query_string="limit=1&limit=2&ascending=maybe", headers=headers)
    assert r.status_code == 400
    assert r.json["errors"] == {"limit": ["Given more than once."], "ascending": ["Not a valid boolean."]}


def test_repeated_unknown_parameters_are_ignored(client, headers, many):
    r = client.get(URL, query_string="colour=red&colour=blue&limit=2", headers=headers)
    assert r.status_code == 200
    assert r.json["pods"] == many[::-1][:2]
