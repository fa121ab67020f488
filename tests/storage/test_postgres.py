"""PostgreSQL only: several pods instances on one database keep every rule of the
contract; start-up applies the schema once; faults (connections killed, the server
unreachable, an instance killed) lose nothing acknowledged; passwords stay hidden."""

import json
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import dbtools
from dbtools import query
from helpers import AUTH, KEY, URL, Server, new_database, run_app, storage_of, wait_until
from tcpproxy import TcpProxy

from pods import close_app, create_app
from pods.api.auth import hash_key, token_prefix
from pods.storage import interface as base, postgres, same_database, sqlite


@pytest.fixture
def pg(request, tmp_path):
    """A new, empty PostgreSQL database (a schema of its own) for one test."""
    return new_database("postgres", tmp_path, request)


@pytest.fixture
def instances(pg, tmp_path, servers):
    """start(n, *args) -> n pods instances serving ``pg``; all stopped at the end (``servers``)."""

    def start(n, *args, db=None):
        return [servers(db or pg, *args, env={"PODS_API_KEY": KEY}, workdir=tmp_path) for _ in range(n)]

    return start


def client(server, headers=AUTH) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/agent/v0", headers=headers, timeout=30)


# -- one database, many instances -------------------------------------------------------


@pytest.mark.live
def test_a_pod_made_at_one_instance_is_read_listed_and_deleted_at_another(instances):
    a, b = instances(2)
    with client(a) as at_a, client(b) as at_b:
        pod = at_a.post("/pods", json={"name": "shared", "client_id": "c1"}).json()
        assert at_b.get(f"/pods/{pod['pod_id']}").json() == pod
        assert at_b.get("/pods").json()["pods"] == [pod]
        assert at_b.post("/pods", json={"client_id": "c1"}).json() == pod  # idempotent across instances
        assert at_b.delete(f"/pods/{pod['pod_id']}").status_code == 200
        assert at_a.get(f"/pods/{pod['pod_id']}").status_code == 404


@pytest.mark.live
def test_concurrent_creates_with_one_client_id_across_instances_make_one_pod(instances, pg):
    servers = instances(3)
    barrier, answers = threading.Barrier(24), []

    def create(n):
        with client(servers[n % 3]) as c:
            c.get("/pods")  # connect first, so the creates leave together
            barrier.wait()
            r = c.post("/pods", json={"client_id": "the-one", "name": f"attempt {n}"})
            answers.append((r.status_code, json.dumps(r.json(), sort_keys=True)))

    threads = [threading.Thread(target=create, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 24 and {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1
    assert query(pg, "SELECT count(*) FROM pod WHERE client_id = 'the-one'") == [(1,)]


@pytest.mark.live
def test_a_key_deleted_or_revoked_anywhere_is_refused_at_every_instance_on_the_next_request(instances, pg):
    a, b = instances(2)
    with client(a) as at_a:
        pod = at_a.post("/pods", json={"name": "scoped"}).json()
        made = {name: at_a.post("/api-keys", json={"name": name}).json() for name in ("deleted", "revoked")}
        made["pod's"] = at_a.post(f"/pods/{pod['pod_id']}/api-keys", json={"name": "pod's"}).json()
    keys = {name: {"Authorization": f"Bearer {key['api_key']}"} for name, key in made.items()}
    with client(b, keys["deleted"]) as deleted, client(b, keys["revoked"]) as revoked, \
            client(b, keys["pod's"]) as scoped, client(a) as at_a:
        assert {deleted.get("/pods").status_code, revoked.get("/pods").status_code,
                scoped.get("/pods").status_code} == {200}  # known, and used, at B
        assert at_a.delete(f"/api-keys/{made['deleted']['api_key_id']}").status_code == 200
        assert deleted.get("/pods").status_code == 401
        assert run_app("keys", "revoke", made["revoked"]["api_key_id"], "--db", pg).returncode == 0
        assert revoked.get("/pods").status_code == 401
        assert at_a.delete(f"/pods/{pod['pod_id']}").status_code == 200
        assert scoped.get("/pods").status_code == 401
        assert at_a.get("/pods").status_code == 200


@pytest.mark.live
def test_page_tokens_cross_instances_and_a_walk_across_them_under_churn_sees_every_stable_pod_once(instances):
    servers = instances(3)
    with client(servers[0]) as c:
        stable = [c.post("/pods", json={"name": f"stable {i}"}).json() for i in range(40)]
    stop = threading.Event()

    def churn(server):
        with client(server) as c:
            while not stop.is_set():
                pod = c.post("/pods", json={"name": "churn"}).json()
                c.delete(f"/pods/{pod['pod_id']}")
                c.post("/pods", json={"name": "churn kept"})

    churners = [threading.Thread(target=churn, args=(s,)) for s in servers]
    for t in churners:
        t.start()
    seen, params, page_number = [], {"limit": 7}, 0
    try:
        while True:
            with client(servers[page_number % 3]) as c:  # each page from the next instance
                page = c.get("/pods", params=params).json()
            seen += page["pods"]
            page_number += 1
            if "next_page_token" not in page:
                break
            params["page_token"] = page["next_page_token"]
    finally:
        stop.set()
        for t in churners:
            t.join()
    ids = [p["pod_id"] for p in seen]
    assert len(ids) == len(set(ids))
    assert [p for p in seen if p["name"].startswith("stable")] == stable[::-1]
    order = [(p["created_at"], p["pod_id"]) for p in seen]
    assert order == sorted(order, reverse=True)
    assert page_number > 3


def test_created_at_comes_from_the_database_servers_clock(pg, monkeypatch):
    """Every clock pods keeps in Python is set to the year 2000: a pod's created_at
    is still now, by the database server's clock."""
    monkeypatch.setattr(base, "utc_now", lambda: "2000-01-01T00:00:00.000000Z")
    monkeypatch.setattr(sqlite, "utc_now", lambda: "2000-01-01T00:00:00.000000Z")
    app = create_app({"TESTING": True, "DB": pg})
    try:
        c = app.test_client()
        from pods.api.auth import hash_key, token_prefix

        storage_of(app).insert_api_key("acme", hash_key(KEY), token_prefix(KEY))
        pod = c.post(URL, json={"name": "when"}, headers=AUTH).json
        server_now = query(pg, "SELECT clock_timestamp()")[0][0]
        assert pod["created_at"][:4] != "2000"
        assert abs(_seconds(server_now) - _seconds(pod["created_at"])) < 60
    finally:
        close_app(app)


def _seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


@pytest.mark.live
def test_three_instances_starting_at_once_on_an_empty_database_apply_the_schema_once(pg, tmp_path, servers):
    started, failures = [], []

    def start():
        try:
            started.append(servers(pg, env={"PODS_API_KEY": KEY}, workdir=tmp_path))
        except RuntimeError as e:
            failures.append(e)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and len(started) == 3
    for s in started:
        assert httpx.get(s.url + URL, headers=AUTH).status_code == 200
    assert query(pg, "SELECT version FROM pods_schema") == [(postgres.SCHEMA_VERSION,)]
    assert query(pg, "SELECT count(*) FROM api_key") == [(1,)]  # PODS_API_KEY, stored once
    for s in started:
        s.close()
    for s in started:
        assert "ERROR" not in s.stderr and "Traceback" not in s.stderr


# -- faults ---------------------------------------------------------------------------------------


class Writers:
    """Clients creating pods at ``servers`` until stopped; what was acknowledged,
    and every status seen."""

    def __init__(self, servers, per_server=2):
        self.acknowledged, self.statuses, self.stop = [], [], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(s, n)) for s in servers for n in range(per_server)]
        for t in self.threads:
            t.start()

    def _run(self, server, n):
        with client(server) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    r = c.post("/pods", json={"name": f"w{n}-{i}", "client_id": f"{server.port}-{n}-{i}"})
                except httpx.TransportError:
                    time.sleep(0.02)
                    continue
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.acknowledged.append(r.json())
                else:
                    assert r.status_code == 503 and r.json()["name"] == "ServiceUnavailableError", r.text
                    time.sleep(0.02)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def stored_pods(db):
    return {row[0]: row for row in query(db, "SELECT pod_id, name, client_id, created_at FROM pod")}


def assert_every_acknowledged_pod_stored(db, acknowledged):
    stored = stored_pods(db)
    for pod in acknowledged:
        assert stored[pod["pod_id"]] == (pod["pod_id"], pod["name"], pod["client_id"], pod["created_at"])
    client_ids = [row[2] for row in stored.values()]
    assert len(client_ids) == len(set(client_ids))  # nothing half-written, nothing twice


def terminate_pods_connections(db):
    name = urlsplit(db).path.lstrip("/")
    return query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE application_name = 'pods' AND datname = ?", (name,))


def wait_healthy(server, timeout=20):
    healthy = wait_until(lambda: httpx.get(server.url + "/healthz").status_code == 200, timeout, interval=0.1)
    assert healthy, "the server did not recover"


@pytest.mark.live
def test_connections_killed_under_load_lose_nothing_and_service_resumes(instances, pg):
    a, b = instances(2)
    writers = Writers([a, b])
    time.sleep(0.5)
    for _ in range(3):
        assert terminate_pods_connections(pg)
        time.sleep(0.4)
    time.sleep(0.5)
    writers.finish()
    assert 200 in writers.statuses[-10:]  # serving again, by itself
    for s in (a, b):
        wait_healthy(s)
    assert set(writers.statuses) <= {200, 503}
    assert_every_acknowledged_pod_stored(pg, writers.acknowledged)


@pytest.mark.live
def test_the_database_unreachable_for_seconds_is_503_and_healthz_503_then_service_resumes(instances, pg):
    parts = urlsplit(pg)
    proxy = TcpProxy((parts.hostname, parts.port or 5432))
    try:
        via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        (server,) = instances(1, db=via_proxy)
        writers = Writers([server], per_server=1)
        time.sleep(0.5)
        proxy.cut()
        time.sleep(1)
        health = httpx.get(server.url + "/healthz", timeout=30)
        assert (health.status_code, health.json()["name"]) == (503, "ServiceUnavailableError")
        during = httpx.post(server.url + URL, json={"name": "while away"}, headers=AUTH, timeout=30)
        assert during.status_code == 503
        time.sleep(2)
        proxy.restore()
        wait_healthy(server)
        time.sleep(0.5)
        writers.finish()
        assert writers.statuses[-1] == 200
        assert set(writers.statuses) <= {200, 503} and 503 in writers.statuses
        assert "while away" not in {row[1] for row in stored_pods(pg).values()}
        assert_every_acknowledged_pod_stored(pg, writers.acknowledged)
        assert "Traceback" not in server.stderr
    finally:
        proxy.close()


@pytest.mark.live
def test_an_idle_server_does_not_flood_the_log_while_the_database_is_unreachable(instances, pg):
    """Its look for new keys, once a second, is spaced out while the database does
    not answer: each would have the pool try, and log, a connection (three lines a
    second, an idle server, for as long as the outage lasted)."""
    parts = urlsplit(pg)
    proxy = TcpProxy((parts.hostname, parts.port or 5432))
    try:
        via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        (server,) = instances(1, db=via_proxy)
        time.sleep(0.5)
        proxy.cut()
        time.sleep(5)  # five of the pool's attempts, a second apart
        logged = server.stderr.count("\n")
        proxy.restore()
        wait_healthy(server)
        lines = server.stderr.splitlines()[:logged]
        assert sum("could not look for new keys" in line for line in lines) == 1
        # The pool's attempts to reconnect, one a second: the first said, the rest a minute later.
        assert sum("psycopg.pool error connecting" in line for line in lines) == 1, "\n".join(lines[-20:])
    finally:
        proxy.close()


@pytest.mark.live
def test_kill_9_of_one_instance_under_write_load_loses_nothing_and_the_others_serve(instances, pg):
    a, b = instances(2)
    writers = Writers([a, b])
    time.sleep(0.6)
    a.kill()
    time.sleep(0.6)
    writers.finish()
    with client(b) as at_b:
        assert at_b.get("/pods").status_code == 200
    assert_every_acknowledged_pod_stored(pg, writers.acknowledged)
    assert any(pod["client_id"].startswith(f"{b.port}-") for pod in writers.acknowledged[-5:])


# -- connections, limits and races -----------------------------------------------------------------


@pytest.fixture
def serving(pg):
    """serving(**config) -> an app on ``pg`` with its key stored, as a server builds it; closed at the end."""
    apps = []

    def make(**config):
        app = create_app({"TESTING": True, "DB": pg, **config})
        apps.append(app)
        storage_of(app).insert_api_key("acme", hash_key(KEY), token_prefix(KEY))
        storage_of(app).end_thread()  # the test's thread holds nothing, like a server's main thread
        return app

    yield make
    for app in apps:
        close_app(app)


def in_thread(function):
    """``function()`` run in a thread of its own, which then ends holding what it took
    (as a server's request thread holds its connection between requests)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.live
def test_a_postgresql_server_has_four_request_threads_unless_told(instances):
    default, told = instances(1)[0], instances(1, "--threads", "2")[0]
    assert "1 worker(s), 4 thread(s) each)" in default.stdout and "1 worker(s), 2 thread(s) each)" in told.stdout


def test_key_uses_are_recorded_while_every_request_thread_holds_its_connection(serving, pg):
    app = serving(THREADS=1, KEY_USE_FLUSH_SECONDS=0.05)
    assert in_thread(lambda: app.test_client().get(URL, headers=AUTH).status_code) == 200
    assert wait_until(lambda: query(pg, "SELECT used_at FROM api_key") != [(None,)], timeout=10), \
        "used_at was never recorded"


def test_a_connection_the_server_closed_between_requests_is_replaced_without_a_503(serving, pg):
    app = serving(THREADS=1)
    c = app.test_client()
    assert c.get(URL, headers=AUTH).status_code == 200  # this thread now keeps a connection
    assert c.get("/healthz").status_code == 200
    for request in (lambda: c.get(URL, headers=AUTH), lambda: c.get("/healthz"),
                    lambda: c.post(URL, json={"name": "after a restart"}, headers=AUTH)):
        assert terminate_pods_connections(pg)
        r = request()
        assert r.status_code == 200, r.json


@pytest.fixture
def proxied(pg):
    """(proxy, URL of ``pg`` through it)."""
    parts = urlsplit(pg)
    proxy = TcpProxy((parts.hostname, parts.port or 5432))
    yield proxy, urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    proxy.close()


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_server_that_stops_answering_costs_requests_a_503_not_their_thread(serving, proxied, monkeypatch):
    """Connected, but nothing comes back (a stopped server, a hung link): statement
    timeouts and keepalives see nothing wrong; the watchdog cuts the connection."""
    monkeypatch.setattr(postgres, "STALL_LIMIT", 1.0)
    proxy, url = proxied
    app = serving(DB=url, THREADS=2)
    c = app.test_client()
    assert c.get(URL, headers=AUTH).status_code == 200  # this thread now keeps a connection
    proxy.stall()
    for request in (lambda: c.get(URL, headers=AUTH), lambda: c.post(URL, json={"name": "x"}, headers=AUTH),
                    lambda: c.get("/healthz")):
        r, waited = timed(request)
        assert (r.status_code, r.json["name"]) == (503, "ServiceUnavailableError")
        assert waited < 4
    proxy.unstall()
    assert wait_until(lambda: c.get("/healthz").status_code == 200, timeout=20, interval=0.1), "service did not resume"
    assert [p["name"] for p in c.get(URL, headers=AUTH).json["pods"]] in ([], ["x"])  # the stalled create: either
    # Shutdown while stalled, with a key use still to record: it ends.
    assert c.post(URL, json={"name": "y"}, headers=AUTH).status_code == 200
    proxy.stall()
    closing = threading.Thread(target=close_app, args=(app,), daemon=True)
    _, waited = timed(lambda: (closing.start(), closing.join(15)))
    assert not closing.is_alive() and waited < 10


@pytest.mark.live
def test_a_stalled_database_lets_the_server_answer_and_stop(instances, proxied):
    """Requests waiting on a database that stopped answering, and a SIGTERM meanwhile:
    each request gets its 503 and the server exits."""
    proxy, url = proxied
    (server,) = instances(1, db=url)
    with ThreadPoolExecutor(4) as pool:  # each of its 4 threads keeps a connection
        assert {r.status_code for r in pool.map(lambda _: httpx.get(server.url + URL, headers=AUTH), range(32))} == {200}
        proxy.stall()
        waiting = [pool.submit(httpx.get, server.url + URL, headers=AUTH, timeout=60) for _ in range(4)]
        time.sleep(1)
        stopped, waited = timed(lambda: server.stop(timeout=60))
        answers = [f.result() for f in waiting]
    assert {(r.status_code, r.json()["name"]) for r in answers} == {(503, "ServiceUnavailableError")}, answers
    assert stopped == 0 and waited < 20, waited  # postgres.STALL_LIMIT, and a margin for a busy machine
    assert re.search(r"ERROR pods.db the database server has not answered for [89] s: connection closed", server.stderr)
    assert "Traceback" not in server.stderr


def test_serving_connections_bound_statements_and_lock_waits_and_notice_a_silent_network(serving, pg, monkeypatch):
    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT", "300ms")
    app = serving(THREADS=1)
    conn = storage_of(app).connection()
    assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "300ms"
    assert conn.execute("SHOW lock_timeout").fetchone()["lock_timeout"] == "300ms"
    assert {"keepalives=1", "keepalives_idle=5", "tcp_user_timeout=10000", "application_name=pods"} <= set(
        conn.info.dsn.split())
    storage_of(app).end_thread()
    # A table locked by someone else: a create waits 300 ms, then 503, and changes nothing.
    import psycopg

    with psycopg.connect(pg) as blocker:
        blocker.execute("LOCK TABLE pod IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        r = app.test_client().post(URL, json={"name": "blocked"}, headers=AUTH)
        waited = time.monotonic() - started
    assert (r.status_code, r.json["name"]) == (503, "ServiceUnavailableError")
    assert 0.25 < waited < 3
    assert query(pg, "SELECT count(*) FROM pod") == [(0,)]
    assert app.test_client().post(URL, json={"name": "free"}, headers=AUTH).status_code == 200


@pytest.mark.parametrize("table", ["api_key", "pod", "organization"])
def test_healthz_is_503_while_a_table_every_request_reads_is_locked(serving, pg, table):
    import psycopg

    app = serving(THREADS=1)
    c = app.test_client()
    with psycopg.connect(pg) as blocker:
        blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        r = c.get("/healthz")
        waited = time.monotonic() - started
    assert (r.status_code, r.json["name"]) == (503, "ServiceUnavailableError")
    assert waited < 3
    assert c.get("/healthz").json == {"status": "ok"}
    assert c.get(URL, headers=AUTH).status_code == 200


def test_healthz_write_probe_waits_half_a_second_for_a_lock(serving, pg):
    import psycopg

    app = serving(THREADS=1)
    storage_of(app).write_failed = True  # a request found the database unavailable
    with psycopg.connect(pg) as blocker:
        blocker.execute("LOCK TABLE setting IN ACCESS EXCLUSIVE MODE")
        r, waited = timed(lambda: app.test_client().get("/healthz"))
    assert r.status_code == 503 and waited < 2
    assert app.test_client().get("/healthz").status_code == 200


def test_a_transaction_of_several_waits_each_short_is_not_taken_for_a_stall(serving, pg, monkeypatch):
    """The watchdog times each statement: a delete waiting 0.7 s for the pod's row,
    then 0.7 s for its key's, is not cut at the 1 s limit."""
    import psycopg

    monkeypatch.setattr(postgres, "STALL_LIMIT", 1.0)
    app = serving(THREADS=1)
    c = app.test_client()
    pod_id = c.post(URL, json={"name": "slow"}, headers=AUTH).json["pod_id"]
    storage_of(app).insert_api_key("acme", hash_key("pods_" + "k" * 40), "pods_kkk", None, pod_id)
    storage_of(app).end_thread()
    with psycopg.connect(pg) as pod_holder, psycopg.connect(pg) as key_holder:
        pod_holder.execute("BEGIN")
        pod_holder.execute("SELECT 1 FROM pod WHERE pod_id = %s FOR UPDATE", (pod_id,))
        key_holder.execute("BEGIN")
        key_holder.execute("SELECT 1 FROM api_key WHERE pod_id = %s FOR UPDATE", (pod_id,))
        releases = [threading.Timer(0.7, pod_holder.commit), threading.Timer(1.4, key_holder.commit)]
        for timer in releases:
            timer.start()
        r, waited = timed(lambda: c.delete(f"{URL}/{pod_id}", headers=AUTH))
        for timer in releases:
            timer.join()
    assert r.status_code == 200, r.json
    assert waited > 1.3
    assert query(pg, "SELECT count(*) FROM pod") == [(0,)]


def test_a_urls_own_connection_settings_win(pg):
    storage = postgres.PostgresStorage(pg + "&connect_timeout=2&keepalives_idle=30")
    try:
        dsn = set(storage.connection().info.dsn.split())
        assert {"connect_timeout=2", "keepalives_idle=30", "keepalives_count=2"} <= dsn
    finally:
        storage.close()


def race(app, first, second, rounds=30):
    """Each round: set_up() -> x, then first(client, x) and second(client, x) at once,
    from two request threads (which keep their connections, as a server's do).
    Returns [(first's answer, second's answer)] per round."""
    barrier = threading.Barrier(2)

    def at_once(request, x):
        barrier.wait()
        return request(app.test_client(), x)

    with ThreadPoolExecutor(2) as pool:
        return [
            tuple(f.result() for f in [pool.submit(at_once, first, x), pool.submit(at_once, second, x)])
            for x in range(rounds)
        ]


def test_a_key_made_for_a_pod_being_deleted_is_404_or_deleted_with_it(serving, pg):
    app = serving(THREADS=2)
    pods = [app.test_client().post(URL, json={"name": f"doomed {i}"}, headers=AUTH).json["pod_id"] for i in range(30)]
    answers = race(
        app,
        lambda c, i: c.post(f"{URL}/{pods[i]}/api-keys", json={"name": "k"}, headers=AUTH).status_code,
        lambda c, i: c.delete(f"{URL}/{pods[i]}", headers=AUTH).status_code,
    )
    assert {made for made, _ in answers} <= {200, 404} and {deleted for _, deleted in answers} == {200}
    assert query(pg, "SELECT count(*) FROM api_key WHERE pod_id IS NOT NULL") == [(0,)]
    assert query(pg, "SELECT count(*) FROM pod") == [(0,)]


def test_a_create_racing_the_delete_of_its_client_ids_pod_answers_a_pod(serving, pg):
    app = serving(THREADS=2)
    pods = [app.test_client().post(URL, json={"client_id": f"c{i}"}, headers=AUTH).json["pod_id"] for i in range(30)]

    def create(c, i):
        r = c.post(URL, json={"client_id": f"c{i}"}, headers=AUTH)
        return r.status_code, r.json.get("client_id")

    answers = race(app, create, lambda c, i: c.delete(f"{URL}/{pods[i]}", headers=AUTH).status_code)
    assert answers == [((200, f"c{i}"), 200) for i in range(30)]


def test_a_read_only_database_is_503_and_healthz_says_so(serving, pg):
    app = serving(THREADS=1)
    c = app.test_client()
    assert c.get(URL, headers=AUTH).status_code == 200  # this thread's connection, kept
    storage_of(app).connection().execute("SET default_transaction_read_only = on")  # as on a standby
    r = c.post(URL, json={"name": "nowhere"}, headers=AUTH)
    assert (r.status_code, r.json["name"]) == (503, "ServiceUnavailableError")
    health = c.get("/healthz")
    assert (health.status_code, health.json["name"]) == (503, "ServiceUnavailableError")
    assert c.get(URL, headers=AUTH).status_code == 200  # reads go on
    storage_of(app).connection().execute("SET default_transaction_read_only = off")
    assert c.get("/healthz").status_code == 200
    assert c.post(URL, json={"name": "somewhere"}, headers=AUTH).status_code == 200


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.parametrize("rows", [0, 2])
def test_a_version_table_without_exactly_one_row_is_one_line(pg, rows):
    assert run_app("init", "--db", pg).returncode == 0
    query(pg, "DELETE FROM pods_schema")
    for _ in range(rows):
        query(pg, "INSERT INTO pods_schema VALUES (1)")
    for args in (["check", "--db", pg], ["--port", "0", "--db", pg]):
        result = run_app(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert f"pods_schema holds {rows} rows, not 1" in lines[0]


@pytest.mark.live
def test_a_database_not_in_utf8_is_refused_in_one_line(postgres):
    admin = postgres.rsplit("/", 1)[0] + "/postgres"
    name = "pods_latin1_" + secrets.token_hex(3)
    query(admin, f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        url = postgres.rsplit("/", 1)[0] + "/" + name
        for args in (["--port", "0", "--db", url], ["init", "--db", url]):
            result = run_app(*args)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1 and len(lines) == 1, result.stderr
            assert "has encoding SQL_ASCII; pods needs UTF8" in lines[0]
        assert query(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    finally:
        dbtools.close_connections()
        query(admin, f"DROP DATABASE {name} WITH (FORCE)")


# -- secrets --------------------------------------------------------------------------------------


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port or 5432}"))


@pytest.mark.live
def test_a_password_in_the_url_never_appears_in_any_output(pg, tmp_path):
    password = "s3cret-Pa55word"
    url = with_password(pg, password)  # the local server trusts: any password will do
    with Server(url, env={"PODS_API_KEY": KEY}, workdir=tmp_path) as server:
        assert httpx.get(server.url + URL, headers=AUTH).status_code == 200
        assert "***" in server.stdout and password not in server.stdout
    outputs = [server.stdout, server.stderr]
    unreachable = with_password(re.sub(r"@[^/]+/", "@127.0.0.1:9/", pg), password)
    missing = with_password(pg.replace(urlsplit(pg).path, "/no_such_database"), password)
    for args in (["--port", "0", "--db", unreachable], ["check", "--db", unreachable], ["keys", "list", "--db", missing],
                 ["check", "--db", missing], ["migrate", "--db", missing], ["copy", missing, str(tmp_path / "x.db")]):
        result = run_app(*args)
        assert result.returncode == 1, (args, result.stderr)
        outputs += [result.stdout, result.stderr]
    assert not any(password in text for text in outputs)
    assert any("***" in text for text in outputs[2:])


@pytest.mark.live
@pytest.mark.parametrize("url,secret", [
    ("postgresql://u:s3cr%3At@127.0.0.1:9/x", ["s3cr%3At", "s3cr:t"]),  # percent-encoded
    ("postgresql://u@127.0.0.1:9/x?password=hunter2&sslmode=disable", ["hunter2"]),  # in the query
    ("postgresql://u:pa/ss@127.0.0.1:9/x", ["pa/ss", "pa"]),  # unencoded /: libpq takes "pa" for a port
    ("postgresql://u:p@ss@127.0.0.1:9/x", ["p@ss"]),  # unencoded @
    ("postgresql://u:p%40ss@[::1", ["p%40ss", "p@ss"]),  # unreadable: no closing ]
    ("postgresql://u:pa ss@127.0.0.1:9/x", ["pa ss"]),  # unreadable: a space, which libpq quotes
    ("postgresql://u:a%zzb@127.0.0.1:9/x", ["a%zzb"]),  # unreadable: a bad escape, which libpq quotes
    ("postgresql://u@127.0.0.1:9/x?password=a%zzb", ["a%zzb"]),
    ("postgresql://u@127.0.0.1:9/x?password=S3C#RETpw", ["S3C", "RETpw"]),  # libpq: "#" is part of the value
    ("postgresql://u@127.0.0.1:9/x?%70assword=hunter2", ["hunter2"]),  # the name percent-encoded
    ("postgresql://u@127.0.0.1:9/x?password%3Dhunter2", ["hunter2"]),  # unreadable: no "=", which libpq quotes
    ("postgresql://u:p?ss@127.0.0.1:9/x?application_name=a@b", ["p?ss"]),  # "?" in the password, "@" in the query
    ("POSTGRESQL://u:hunter2@127.0.0.1:9/x", ["hunter2"]),  # any case of scheme is a URL, never a file name
    ("postgresql://u@127.0.0.1:9/x?password=ab&cdSECRET", ["cdSECRET"]),  # unencoded "&": libpq quotes the rest
    ("postgresql://u@127.0.0.1:9/x?password=ab&cdSECRET=1&sslmode=disable", ["cdSECRET"]),
    ("postgresql://u@127.0.0.1:9/x?sslpassword=hunter2&sslmode=disable", ["hunter2"]),
    ("postgresql://u@127.0.0.1:9/x?oauth_client_secret=hunter2&sslmode=disable", ["hunter2"]),  # libpq 18's
])
def test_no_url_however_malformed_shows_its_password_or_a_traceback(url, secret, tmp_path):
    for args in (["--port", "0", "--db", url], ["check", "--db", url], ["copy", url, str(tmp_path / "x.db")]):
        result = run_app(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert "***" in lines[0] and not any(part in lines[0] + result.stdout for part in secret), lines[0]


@pytest.mark.parametrize("a,b,same", [
    ("postgresql://u:one@h/x", "POSTGRESQL://u:two@h/x", True),  # the password and the scheme's case do not count
    ("postgresql://u@h1/x?application_name=a@b", "postgresql://u@h2/x?application_name=a@b", False),
    ("postgresql://u@h/x", "postgresql://u@h/y", False),
    ("postgresql://u@h/x", "x", False),
])
def test_same_database_compares_what_libpq_connects_to(a, b, same):
    assert same_database(a, b) is same and same_database(b, a) is same


@pytest.mark.live
def test_copy_refuses_one_postgresql_database_however_spelled(pg):
    assert run_app("init", "--db", pg).returncode == 0
    result = run_app("copy", with_password(pg, "anything"), "POSTGRESQL" + pg[pg.index(":"):])
    assert result.returncode == 1 and "SOURCE and DEST are the same database" in result.stderr
    # Spelled so that no reading of the URLs can tell, and empty (the copy would wait on itself forever).
    query(pg, "TRUNCATE organization, pod, api_key, setting")
    assert "127.0.0.1" in pg
    result = run_app("copy", pg, pg.replace("127.0.0.1", "localhost"), timeout=30)
    assert result.returncode == 1 and "SOURCE and DEST are the same database" in result.stderr
    # As two roles, one of them no superuser (which does not see the other's sessions in detail).
    role = f"pods_copy_{secrets.token_hex(4)}"
    database = urlsplit(pg).path.lstrip("/")
    query(pg, f"CREATE ROLE {role} LOGIN")
    try:
        query(pg, f"GRANT ALL ON DATABASE {database} TO {role}")
        query(pg, f"GRANT ALL ON SCHEMA {current_schema(pg)} TO {role}")
        query(pg, f"GRANT ALL ON ALL TABLES IN SCHEMA {current_schema(pg)} TO {role}")
        as_role = urlunsplit(urlsplit(pg)._replace(netloc=f"{role}@localhost:{urlsplit(pg).port or 5432}"))
        result = run_app("copy", pg, as_role, timeout=30)
        assert result.returncode == 1 and "SOURCE and DEST are the same database" in result.stderr, result.stderr
    finally:
        query(pg, f"DROP OWNED BY {role}")
        query(pg, f"DROP ROLE {role}")


def current_schema(db):
    return query(db, "SELECT current_schema()")[0][0]


@pytest.mark.live
def test_check_and_migrate_work_on_postgresql(pg):
    assert run_app("init", "--db", pg).returncode == 0
    assert run_app("check", "--db", pg).stdout.strip().endswith(": ok")
    assert "is current" in run_app("migrate", "--db", pg).stdout
    query(pg, "ALTER TABLE setting RENAME TO setting_table")
    query(pg, "CREATE VIEW setting AS SELECT * FROM setting_table")
    broken = run_app("check", "--db", pg)
    assert broken.returncode == 1 and "without table(s) setting" in broken.stderr  # a view is no table
    query(pg, "DROP VIEW setting")
    query(pg, "ALTER TABLE setting_table RENAME TO setting")
    query(pg, "ALTER TABLE pod RENAME COLUMN name TO title")
    broken = run_app("check", "--db", pg)
    assert broken.returncode == 1 and f"schema version {postgres.SCHEMA_VERSION} without column(s) pod.name" in broken.stderr
    query(pg, "DROP TABLE setting")
    broken = run_app("check", "--db", pg)
    assert broken.returncode == 1 and "without table(s) setting" in broken.stderr


@pytest.mark.live
def test_a_database_of_another_program_is_refused(pg):
    query(pg, "CREATE TABLE invoices (id int)")
    result = run_app("--port", "0", "--db", pg)
    assert result.returncode == 1
    assert "is not a pods database (tables: invoices)" in result.stderr


@pytest.mark.live
def test_the_server_unreachable_at_start_is_one_line(tmp_path):
    result = run_app("--port", "0", "--db", "postgresql://postgres@127.0.0.1:9/x")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: database postgresql://")


@pytest.mark.live
def test_a_missing_psycopg_is_one_line(tmp_path):
    import subprocess
    import sys

    # Run with psycopg made unimportable.
    code = ("import sys; sys.modules['psycopg'] = None; sys.argv = ['pods', 'check', '--db', 'postgresql://x/y'];"
            "from pods.cli import cli; cli()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: a postgresql:// database needs the postgres extra (psycopg), not installed with this pods:"
        f" {sys.executable} -m pip install 'psycopg[binary]>=3.2,<4' 'psycopg-pool>=3.3,<3.4'"
        f" (or, in a clone of pods: pip install '.[postgres]')")

