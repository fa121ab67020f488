"""Metrics, in process: each series moves as it should, by exactly what was done,
and no label ever holds what a client sent. (Real servers, promtool and a real
Prometheus: tests/serving/test_metrics_live.py.)"""

import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import dbtools
import httpx
import pytest
from flask import abort
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import values as prometheus_values

from helpers import storage_of, wait_until
from metricstools import by_labels, exposition, label_values, samples, value
from pods import close_app, create_app
from pods.api import accesslog, logstream
from pods.api.auth import auth, hash_key, new_token, token_prefix
from pods.serving import exporter as exporter_module
from pods.serving.exporter import Exporter
from pods.serving.metrics import METHODS, ServerMetrics
from pods.storage import observed, open_storage, sqlite
from pods.storage.postgres import PostgresStorage
from pods.storage.sqlite import SQLiteStorage

URL = "/agent/v0/pods"


# -- an app reporting to metrics of its own -------------------------------------------------


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def metrics(registry, database):
    return ServerMetrics(registry, by_org=True, pool=database.startswith("postgresql"))


@pytest.fixture
def app(database, metrics):
    app = create_app({"TESTING": True, "DB": database}, observer=metrics)

    # A route answering 429 as a rate limit would (issue 17's limiter is not here yet).
    @app.get("/test/limited")
    @auth.login_required(role="pod_read")
    def limited():
        abort(429)

    metrics.watch_storage(storage_of(app))
    yield app
    close_app(app)


def make_key(app, org="acme", pod_id=None):
    token = new_token()
    row = storage_of(app).insert_api_key(org, hash_key(token), token_prefix(token), pod_id=pod_id)
    return {"Authorization": f"Bearer {token}"}, token, row["key_id"]


def test_n_answers_per_route_and_status_add_exactly_n(app, registry):
    client = app.test_client()
    headers, _, key_id = make_key(app)
    pod = client.post(URL, json={"name": "p", "client_id": "c-1"}, headers=headers).json
    before = exposition(registry)
    sent = {
        ("GET", URL, "200"): 3,
        ("POST", URL, "200"): 2,
        ("GET", "/agent/v0/pods/{pod_id}", "200"): 4,
        ("GET", "/agent/v0/pods/{pod_id}", "404"): 2,
        ("DELETE", "/agent/v0/pods/{pod_id}", "401"): 1,
        ("GET", "/agent/v0/api-keys/{api_key_id}", "200"): 1,
        ("GET", "unmatched", "404"): 2,
        ("PUT", "unmatched", "405"): 1,
        ("GET", "/healthz", "200"): 1,
        ("GET", "/test/limited", "429"): 2,
    }
    for _ in range(3):
        assert client.get(URL, headers=headers).status_code == 200
    for i in range(2):
        assert client.post(URL, json={"name": f"n{i}"}, headers=headers).status_code == 200
    for _ in range(4):
        assert client.get(f"{URL}/{pod['pod_id']}", headers=headers).status_code == 200
    for missing in ("no-such-pod", "also-missing"):
        assert client.get(f"{URL}/{missing}", headers=headers).status_code == 404
    assert client.delete(f"{URL}/{pod['pod_id']}").status_code == 401
    assert client.get(f"/agent/v0/api-keys/{key_id}", headers=headers).status_code == 200
    assert client.get("/nowhere", headers=headers).status_code == 404
    assert client.get(f"{URL}/{pod['pod_id']}/x/y", headers=headers).status_code == 404
    assert client.put(URL, headers=headers).status_code == 405
    assert client.get("/healthz").status_code == 200
    for _ in range(2):
        assert client.get("/test/limited", headers=headers).status_code == 429
    after = exposition(registry)

    moved = {}
    for key, count in by_labels(after, "pods_http_requests_total", "method", "route", "status").items():
        if count != by_labels(before, "pods_http_requests_total", "method", "route", "status").get(key, 0):
            moved[key] = count - by_labels(before, "pods_http_requests_total", "method", "route", "status").get(key, 0)
    assert moved == sent
    # Every answer timed, once, under its method and route.
    durations = by_labels(after, "pods_http_request_duration_seconds_count", "method", "route")
    timed = {}
    for (method, route, _), count in sent.items():
        timed[(method, route)] = timed.get((method, route), 0) + count
    for key, count in timed.items():
        earlier = by_labels(before, "pods_http_request_duration_seconds_count", "method", "route").get(key, 0)
        assert durations[key] - earlier == count, key
    # Buckets are cumulative and end at +Inf with the count.
    inf = value(after, "pods_http_request_duration_seconds_bucket", method="GET", route=URL, le="+Inf")
    assert inf == value(after, "pods_http_request_duration_seconds_count", method="GET", route=URL) == 3
    # The 429s, and per organization (--metrics-by-org): every answer to acme's key.
    assert value(after, "pods_rate_limited_total") - value(before, "pods_rate_limited_total") == 2
    assert value(after, "pods_org_rate_limited_total", org="acme") == 2
    # (an unknown route is answered before authentication, /healthz needs none)
    authenticated = sum(count for (method, route, status), count in sent.items() if status != "401"
                        and route not in ("/healthz", "unmatched"))
    assert value(after, "pods_org_http_requests_total", org="acme") \
        - value(before, "pods_org_http_requests_total", org="acme") == authenticated
    # Storage operations, timed: one key lookup per authenticated request at least.
    lookups = by_labels(after, "pods_db_operation_duration_seconds_count", "operation")[("caller_for_key_hash",)]
    assert lookups >= authenticated


HOSTILE_PATHS = [
    "/agent/v0/pods/x%0a2026-11-29T00:00:00.000Z%20INFO%20pods.access",
    "/agent/v0/pods/%1b[31mred%1b[0m",
    "/agent/v0/pods/%ff%fe%c0%ae",
    "/agent/v0/pods/a%5cx0a\"}{le=\"",
    "/agent/v0/pods/../../etc/passwd",
    "/agent/v0/pods/" + "z" * 5000,
    "/agent/v0/pods/%7Bpod_id%7D",
    "/{pod_id}",
    "/agent/v0/api-keys/SECRET-KEY-ID/extra",
    "/metrics",
    "//agent/v0/pods",
    "/agent/v0/pods?page_token=SECRET-PAGE-TOKEN&limit=1",
]


def test_no_label_value_ever_holds_what_a_client_sent(app, registry):
    client = app.test_client()
    headers, token, key_id = make_key(app, org="acme")
    pod = client.post(URL, json={"name": "SECRET-POD-NAME", "client_id": "SECRET-CLIENT-ID"}, headers=headers).json
    for path in HOSTILE_PATHS + [f"{URL}/{pod['pod_id']}", f"/agent/v0/api-keys/{key_id}",
                                 f"{URL}/{pod['pod_id']}/api-keys"]:
        for method in ("GET", "DELETE", "PROPFIND", "X" * 300, "get"):
            client.open(path, method=method, headers={**headers, "X-Request-Id": "SECRET-REQUEST-ID"})
    client.get(URL, headers={"Authorization": f"Bearer {token}x"})  # a near-miss token
    text = generate_latest(registry).decode()
    found = samples(text)
    values = label_values(found)
    routes = {accesslog.route_of({accesslog.ROUTE_ENVIRON_KEY: rule.rule}) for rule in app.url_map.iter_rules()}
    assert values["method"] <= METHODS | {"other"}
    assert values["route"] <= routes | {accesslog.UNMATCHED_ROUTE, accesslog.HTTP_ERROR_ROUTE}
    assert all(re.fullmatch(r"\d{3}", status) for status in values["status"])
    assert values["org"] == {"acme"}  # the organization, chosen by the operator: nothing else
    for secret in (pod["pod_id"], key_id, token, token[:12], "SECRET", "passwd", "zzzz", "\\x", "%"):
        assert secret not in text


def test_recording_writes_what_prometheus_clients_own_observe_and_inc_would():
    from prometheus_client import Counter, Histogram

    from pods.serving.metrics import BUCKETS

    seconds = [0, 0.0001, 0.00010001, 0.25, 10, 10.5, 1e9, -1] + [i / 997 for i in range(3000)]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = ServerMetrics(ours)
    duration = Histogram("pods_http_request_duration_seconds", "x", ["method", "route"], buckets=BUCKETS,
                         registry=theirs)
    wait = Histogram("pods_http_queue_wait_seconds", "x", buckets=BUCKETS, registry=theirs)
    operation = Histogram("pods_db_operation_duration_seconds", "x", ["operation"], buckets=BUCKETS,
                          registry=theirs)
    requests = Counter("pods_http_requests", "x", ["method", "route", "status"], registry=theirs)
    for s in seconds:
        metrics.answer("GET", URL, "200", s)
        metrics.queue_wait(s)
        metrics.db_operation("find_pod", s)
        duration.labels("GET", URL).observe(s)
        wait.observe(s)
        operation.labels("find_pod").observe(s)
        requests.labels("GET", URL, "200").inc()
    found, expected = exposition(ours), exposition(theirs)
    for (name, labels), v in expected.items():
        if not name.endswith("_created"):
            assert found[name, labels] == pytest.approx(v), (name, labels)


def test_threads_recording_while_scrapes_fold_lose_and_double_nothing(registry):
    import threading

    metrics = ServerMetrics(registry, by_org=True)

    class Caller:
        org_name = "acme"

    def record(n):
        for i in range(4000):
            metrics.answer("GET", URL, "200", (i % 7) / 1000, Caller)
            metrics.queue_wait(0.002)
            metrics.db_operation("find_pod", 0.0003)

    stop = threading.Event()

    def scrape():
        while not stop.is_set():
            exposition(registry)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    threads = [threading.Thread(target=record, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    scraper.join()
    found = exposition(registry)
    assert value(found, "pods_http_requests_total", method="GET", route=URL, status="200") == 24000
    assert value(found, "pods_org_http_requests_total", org="acme") == 24000
    assert value(found, "pods_http_request_duration_seconds_bucket", method="GET", route=URL, le="0.001") == \
        6 * (4000 // 7 * 2 + 2)  # 0 and 1 ms of every 7
    assert value(found, "pods_http_request_duration_seconds_sum", method="GET", route=URL) == \
        pytest.approx(6 * sum((i % 7) / 1000 for i in range(4000)))
    assert value(found, "pods_http_queue_wait_seconds_count") == 24000
    assert value(found, "pods_db_operation_duration_seconds_count", operation="find_pod") == 24000


def test_a_shed_request_is_counted_and_nothing_else_moves(registry):
    metrics = ServerMetrics(registry)
    before = exposition(registry)
    metrics.shed()
    after = exposition(registry)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert changed == {("pods_shed_total", ()): 1}


def test_a_429_from_anywhere_is_counted_with_its_organization(registry):
    class Caller:
        org_name = "Zürich \"quoted\" org\n"

    metrics = ServerMetrics(registry, by_org=True)
    metrics.rate_limited(Caller())
    metrics.rate_limited(None)  # a client with no key, limited by its address: no organization
    found = exposition(registry)
    assert value(found, "pods_rate_limited_total") == 2
    # Any name the operator chose, escaped by the exposition and read back intact.
    assert value(found, "pods_org_rate_limited_total", org=Caller.org_name) == 1


def test_a_429_and_its_answer_reach_the_series_in_the_same_fold(registry):
    """With --workers a worker folds once a second: a scrape meanwhile must not find
    429s counted as limited that are not yet among the answers (or the reverse)."""
    metrics = ServerMetrics(registry, by_org=True)

    class Caller:
        org_name = "acme"

    for _ in range(3):
        metrics.answer("GET", "refused", "429", 0.0001, Caller())
    metrics.shed()
    unfolded = (metrics.rate_limited_total, metrics.shed_total, metrics.org_rate_limited.labels("acme"),
                metrics.requests.labels("GET", "refused", "429"))
    assert [series._value.get() for series in unfolded] == [0, 0, 0, 0]  # all in the thread's tallies
    metrics.fold()
    assert [series._value.get() for series in unfolded] == [3, 1, 3, 3]


def test_without_by_org_there_is_no_series_per_organization(registry, database):
    app = create_app({"TESTING": True, "DB": database}, observer=ServerMetrics(registry))
    try:
        headers, _, _ = make_key(app)
        assert app.test_client().get(URL, headers=headers).status_code == 200
    finally:
        close_app(app)
    text = generate_latest(registry).decode()
    assert "acme" not in text and "pods_org_" not in text
    assert value(samples(text), "pods_http_requests_total", method="GET", route=URL, status="200") == 1


def test_http_rules_refusals_are_http_error_and_a_double_slash_is_unmatched(app, registry):
    client = app.test_client()
    assert client.get(URL, headers={"Host": "a, b"}).status_code == 400
    assert client.get("//agent/v0/pods").status_code == 404
    found = exposition(registry)
    assert value(found, "pods_http_requests_total", method="GET", route="http_error", status="400") == 1
    assert value(found, "pods_http_requests_total", method="GET", route="unmatched", status="404") == 1


# -- the database ------------------------------------------------------------------------------


@pytest.fixture
def quick_lock(monkeypatch):
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_MS", 200)  # not 5 s per locked request


def test_a_locked_and_a_full_sqlite_database_count_errors_by_kind(tmp_path, registry, quick_lock):
    metrics = ServerMetrics(registry)
    app = create_app({"TESTING": True, "DB": str(tmp_path / "e.db")}, observer=metrics)
    try:
        client = app.test_client()
        headers, _, _ = make_key(app)
        holder = sqlite3.connect(app.config["DB"], isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            for _ in range(2):
                assert client.post(URL, json={"name": "blocked"}, headers=headers).status_code == 503
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        found = exposition(registry)
        assert by_labels(found, "pods_db_errors_total", "kind") == {
            ("locked",): 2, ("unavailable",): 0, ("timeout",): 0, ("other",): 0}
        with app.app_context():
            conn = storage_of(app).connection()
            conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
            statuses = [client.post(URL, json={"name": "x" * 255, "client_id": f"c{i}"}, headers=headers).status_code
                        for i in range(200)]
            conn.execute("PRAGMA max_page_count = 1073741823")
        full = statuses.count(503)
        assert full > 0
        found = exposition(registry)
        assert by_labels(found, "pods_db_errors_total", "kind") == {
            ("locked",): 2, ("unavailable",): full, ("timeout",): 0, ("other",): 0}
        # The failed operations are timed too (the locked ones waited the busy timeout).
        assert value(found, "pods_db_operation_duration_seconds_count", operation="insert_pod") == 2 + 200
        assert value(found, "pods_db_operation_duration_seconds_bucket", operation="insert_pod", le="0.1") < 202
    finally:
        close_app(app)


def test_sqlite_error_kinds(tmp_path):
    kind = SQLiteStorage(str(tmp_path / "pods.db")).error_kind  # it opens nothing until asked
    busy = sqlite3.connect(":memory:")
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert kind(locked) == "locked"
    try:
        raise sqlite3.OperationalError("database is locked") from locked  # as ping raises it
    except sqlite3.OperationalError as e:
        assert kind(e) == "locked"
    assert kind(sqlite3.OperationalError("unable to open database file")) == "unavailable"
    assert kind(sqlite3.IntegrityError("UNIQUE")) == "other"
    assert kind(LookupError("no pod")) is None
    busy.close()


def test_every_instrumented_operation_exists_on_both_backends():
    for backend in (SQLiteStorage, PostgresStorage):
        for name in observed.OPERATIONS:
            assert callable(getattr(backend, name)), (backend, name)
        for name in ("row_counts", "pool_stats", "error_kind"):
            assert callable(getattr(backend, name)), (backend, name)


@pytest.fixture
def proxied(postgres):
    """A PostgreSQL database reached through a TCP proxy a test can cut."""
    from tcpproxy import TcpProxy

    url = dbtools.new_schema(postgres)
    parts = urlsplit(url)
    proxy = TcpProxy((parts.hostname, parts.port or 5432))
    yield proxy, url.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{proxy.port}", 1)
    proxy.restore()


def test_postgresql_pool_series_and_a_stopped_database_count_errors(proxied, registry, monkeypatch):
    from pods.storage import postgres

    monkeypatch.setattr(postgres, "POOL_WAIT", 0.5)
    proxy, url = proxied
    metrics = ServerMetrics(registry, pool=True)
    app = create_app({"TESTING": True, "DB": url, "THREADS": 2}, observer=metrics)
    metrics.watch_storage(storage_of(app))

    class FakeServer:  # what sample() reads of waitress
        class task_dispatcher:
            queue = [1, 2, 3]

        active_channels = {}

    try:
        client = app.test_client()
        headers, _, _ = make_key(app)
        assert client.get(URL, headers=headers).status_code == 200
        metrics.sample(FakeServer)
        found = exposition(registry)
        assert value(found, "pods_db_pool_max_connections") == 4  # threads + 2
        pool = by_labels(found, "pods_db_pool_connections", "state")
        assert pool[("idle",)] + pool[("in_use",)] >= 1
        assert value(found, "pods_http_queue_depth") == 3
        proxy.cut()  # the database server gone
        try:
            statuses = [client.get(URL, headers=headers).status_code for _ in range(3)]
        finally:
            proxy.restore()
        assert statuses == [503] * 3
        found = exposition(registry)
        errors = by_labels(found, "pods_db_errors_total", "kind")
        assert errors[("unavailable",)] + errors[("timeout",)] >= 3, errors
        assert errors[("locked",)] == errors[("other",)] == 0
        for _ in range(50):  # service resumes by itself
            if client.get(URL, headers=headers).status_code == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no 200 after the database came back")
    finally:
        close_app(app)


def test_pool_waits_are_counted_from_the_pools_own_figures(registry):
    metrics = ServerMetrics(registry, pool=True)
    stats = {"pool_size": 3, "pool_available": 1, "pool_max": 6, "requests_waiting": 2,
             "requests_queued": 5, "requests_wait_ms": 1500}
    metrics._sample_pool(stats)
    metrics._sample_pool({**stats, "requests_queued": 7, "requests_wait_ms": 2000})
    metrics._sample_pool({**stats, "requests_queued": 1, "requests_wait_ms": 100})  # a new pool
    found = exposition(registry)
    assert value(found, "pods_db_pool_waits_total") == 8
    assert value(found, "pods_db_pool_wait_seconds_total") == pytest.approx(2.1)
    assert by_labels(found, "pods_db_pool_connections", "state") == {("idle",): 1, ("in_use",): 2}
    assert value(found, "pods_db_pool_waiting") == 2


# -- counts of organizations, keys and pods --------------------------------------------------------


def test_counts_follow_creates_and_deletes(app, database, monkeypatch):
    monkeypatch.setattr(exporter_module, "ALWAYS_RECOUNT_UNDER", float("inf"))  # however slow the machine
    counts = exporter_module._Counts(database)
    client = app.test_client()
    try:
        assert counts.read() == {"organizations": 0, "api_keys": 0, "pods": 0}
        headers, _, _ = make_key(app, org="acme")
        make_key(app, org="beta")
        pods = [client.post(URL, json={"name": f"p{i}"}, headers=headers).json for i in range(3)]
        assert counts.read() == {"organizations": 2, "api_keys": 2, "pods": 3}
        r = client.post(f"{URL}/{pods[0]['pod_id']}/api-keys", json={"name": "agent"}, headers=headers)
        assert r.status_code == 200, r.json
        assert counts.read() == {"organizations": 2, "api_keys": 3, "pods": 3}
        assert client.delete(f"{URL}/{pods[0]['pod_id']}", headers=headers).status_code == 200  # and its key
        assert counts.read() == {"organizations": 2, "api_keys": 2, "pods": 2}
        second = make_key(app, org="acme")[2]
        assert client.delete(f"/agent/v0/api-keys/{second}", headers=headers).status_code == 200
        assert counts.read() == {"organizations": 2, "api_keys": 2, "pods": 2}
        found = samples(generate_latest(_registry_of(counts)).decode())
        assert (value(found, "pods_organizations"), value(found, "pods_api_keys"), value(found, "pods_pods")) == (2, 2, 2)
    finally:
        counts.close()


def _registry_of(collector):
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_a_slow_count_is_reused_for_a_while_and_a_quick_one_never(tmp_path, monkeypatch):
    db = str(tmp_path / "c.db")
    sqlite.init_db(db)
    counts = exporter_module._Counts(db)
    calls = []
    real = SQLiteStorage.row_counts

    def counting(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(SQLiteStorage, "row_counts", counting)
    try:
        counts.read(), counts.read()
        assert len(calls) == 2  # under ALWAYS_RECOUNT_UNDER: counted at every scrape
        counts.cost = 0.5  # as if the last count cost half a second of CPU: reused for 50 s
        counts.read()
        assert len(calls) == 2
        counts.taken -= 51
        counts.read()
        assert len(calls) == 3
        counts.cost = 10.0  # however costly, reused for a minute at most
        counts.taken -= exporter_module.MAX_COUNT_REUSE + 1
        counts.read()
        assert len(calls) == 4
    finally:
        counts.close()


def test_a_stall_does_not_make_a_count_look_costly(tmp_path, monkeypatch):
    """A count that waited (a lock, a slow disk, the interpreter) but did little
    work is taken again at the next scrape, not reused for a hundred times its wait."""
    db = str(tmp_path / "c.db")
    sqlite.init_db(db)
    counts = exporter_module._Counts(db)
    real = SQLiteStorage.row_counts

    def stalled(self):
        time.sleep(0.3)  # waiting costs no CPU
        return real(self)

    monkeypatch.setattr(SQLiteStorage, "row_counts", stalled)
    try:
        assert counts.read() == {"organizations": 0, "api_keys": 0, "pods": 0}
        assert counts.cost < exporter_module.ALWAYS_RECOUNT_UNDER
        monkeypatch.setattr(SQLiteStorage, "row_counts", real)
        writer = open_storage(db)
        writer.insert_api_key("acme", hash_key(new_token()), "pods_x")
        writer.close()
        assert counts.read()["api_keys"] == 1  # counted again at once
    finally:
        counts.close()


def test_a_database_that_does_not_answer_holds_no_scrape(tmp_path, monkeypatch):
    """A count stuck on the database (a hung PostgreSQL): the scrape answers after
    COUNT_WAIT without the counts, the next ones start no second count, and the
    figures return when the database answers."""
    monkeypatch.setattr(exporter_module, "COUNT_WAIT", 0.2)
    db = str(tmp_path / "c.db")
    sqlite.init_db(db)
    counts = exporter_module._Counts(db)
    release = threading.Event()
    calls = []
    real = SQLiteStorage.row_counts

    def hung(self):
        calls.append(1)
        release.wait(30)
        return real(self)

    monkeypatch.setattr(SQLiteStorage, "row_counts", hung)
    try:
        for _ in range(3):
            started = time.monotonic()
            assert counts.read() is None
            assert time.monotonic() - started < 2
        assert len(calls) == 1  # one count at a time, however many scrapes
        release.set()
        assert wait_until(lambda: counts.read(), 5) == {"organizations": 0, "api_keys": 0, "pods": 0}
    finally:
        release.set()
        counts.close()


def test_large_postgresql_tables_are_estimated_not_counted(postgres, monkeypatch):
    from pods.storage import postgres as pg

    url = dbtools.new_schema(postgres)
    storage = open_storage(url, read_only=True)
    try:
        storage.prepare()
        conn = storage.connection()
        conn.execute("INSERT INTO organization (name, created_at) VALUES ('o', now())")
        conn.execute("INSERT INTO pod (pod_id, org_id, name, created_at)"
                     " SELECT 'p' || i, 1, 'n', now() FROM generate_series(1, 5000) AS i")
        for table in ("organization", "api_key", "pod"):
            conn.execute(f"ANALYZE {table}")
        assert storage.row_counts()["pods"] == 5000
        statements = []
        real_execute = type(conn).execute

        def execute(self, statement, *args, **kwargs):
            statements.append(str(statement))
            return real_execute(self, statement, *args, **kwargs)

        monkeypatch.setattr(pg, "EXACT_COUNT_BELOW", 1000)
        monkeypatch.setattr(type(conn), "execute", execute)
        counts = storage.row_counts()
        assert counts["organizations"] == 1 and counts["api_keys"] == 0
        assert 4500 <= counts["pods"] <= 5500  # the planner's estimate
        assert not any("count(*)" in s and "FROM pod" in s for s in statements)
    finally:
        storage.close()


# -- sampled series ------------------------------------------------------------------------------


def test_log_lines_dropped_are_counted(registry, monkeypatch):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: every write fails (EPIPE)
    stream = logstream.LogStream(write_end)
    monkeypatch.setattr(logstream, "stderr", stream)
    metrics = ServerMetrics(registry)

    class Idle:
        class task_dispatcher:
            queue = []

        active_channels = {}

    try:
        for i in range(3):
            stream.write(f"line {i}\n")
            assert stream.flush(timeout=5)
        metrics.sample(Idle)
        metrics.sample(Idle)  # counted once
        assert value(exposition(registry), "pods_log_lines_dropped_total") == 3
    finally:
        os.close(write_end)


def test_connection_states_are_sampled():
    class Channel:
        def __init__(self, requests=(), outbuf=0, request=None):
            self.requests, self.total_outbufs_len, self.request = list(requests), outbuf, request

    class Server:
        class task_dispatcher:
            queue = ["a"]

        active_channels = {1: Channel(), 2: Channel(request=object()), 3: Channel(requests=[1]),
                           4: Channel(outbuf=10), 5: Channel()}

    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    metrics.sample(Server)
    found = exposition(registry)
    assert by_labels(found, "pods_http_connections", "state") == {
        ("idle",): 2, ("reading",): 1, ("mid_request",): 2}
    assert value(found, "pods_http_queue_depth") == 1


# -- several processes: one scrape, the sum; a worker gone keeps its counts -------------------------


@pytest.fixture
def multiprocess_mode(tmp_path):
    """prometheus_client's multiprocess mode for this test, as a server with
    --workers sets it up, and back."""
    saved = prometheus_values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = exporter_module._use_multiprocess_files()
    yield path
    prometheus_values.ValueClass = saved[0]
    if saved[1] is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved[1]
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _worker(answers: int, depth: int) -> int:
    """Fork a process that records like a worker, then exits; returns its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            m = ServerMetrics(None)
            for _ in range(answers):
                m.answer("GET", URL, "200", 0.001)
            m.queue_depth.set(depth)
            m.fold()  # as a worker does once a second, and as it stops
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_worker_that_is_gone_keeps_its_counts_and_its_successor_adds_to_them(multiprocess_mode):
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_mode)
    assert os.stat(multiprocess_mode).st_mode & 0o777 == 0o700
    first = _worker(answers=3, depth=5)
    multiprocess.mark_process_dead(first, multiprocess_mode)  # what the supervisor does
    second = _worker(answers=2, depth=1)  # the worker started again, with a pid of its own
    assert first != second
    found = exposition(registry)
    assert value(found, "pods_http_requests_total", method="GET", route=URL, status="200") == 5  # not 2, not 7
    assert value(found, "pods_http_request_duration_seconds_count", method="GET", route=URL) == 5
    assert value(found, "pods_http_queue_depth") == 1  # the gone worker's gauge left the sum


def test_directories_left_by_killed_servers_are_removed_at_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter_module.tempfile, "tempdir", str(tmp_path))
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while Path(f"/proc/{dead_pid}").exists():  # a process id no process has now
        dead_pid -= 1
    orphan = tmp_path / f"pods-metrics-{dead_pid}-abc"
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"x")
    alive = tmp_path / f"pods-metrics-{os.getpid()}-def"  # a running server's
    alive.mkdir()
    other = tmp_path / f"pods-metrics-{dead_pid}"  # not a name of ours: no id and suffix
    other.mkdir()
    exporter_module._remove_orphans(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])


def test_the_multiprocess_directory_is_private_and_removed_when_the_exporter_stops(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    saved = prometheus_values.ValueClass
    exporter = Exporter("127.0.0.1", 0, str(tmp_path / "x.db"), workers=2)
    try:
        path = exporter.multiprocess_dir
        assert os.path.dirname(path) == str(tmp_path)
        assert os.stat(path).st_mode & 0o777 == 0o700
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == path
    finally:
        exporter.stop()
        prometheus_values.ValueClass = saved
    assert not os.path.exists(path)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


# -- the listener ----------------------------------------------------------------------------------


def test_the_listener_answers_get_metrics_and_nothing_else(tmp_path):
    db = str(tmp_path / "l.db")
    sqlite.init_db(db)
    exporter = Exporter("127.0.0.1", 0, db)
    ServerMetrics(exporter.registry)
    exporter.start()
    base = exporter.url.removesuffix("/metrics")
    try:
        r = httpx.get(exporter.url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        found = samples(r.text)
        assert value(found, "pods_build_info", version=exporter_module.__version__, backend="sqlite",
                     schema_version=str(sqlite.SCHEMA_VERSION)) == 1
        assert value(found, "process_resident_memory_bytes") > 0
        assert value(found, "pods_pods") == 0
        for path in ("/", "/metrics/", "/metricsx", "/favicon.ico", "/agent/v0/pods", "/metrics%2f"):
            assert httpx.get(base + path).status_code == 404, path
        r = httpx.post(exporter.url)
        assert r.status_code == 405 and r.headers["allow"] == "GET"
    finally:
        exporter.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(exporter.url, timeout=2)


def test_an_address_in_use_raises_before_anything_starts(tmp_path):
    first = Exporter("127.0.0.1", 0, str(tmp_path / "x.db"))
    try:
        with pytest.raises(OSError):
            Exporter("127.0.0.1", first.port, str(tmp_path / "x.db"))
    finally:
        first.stop()
