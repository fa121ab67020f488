"""Fair share against real servers: rate limits (429 exactly as the contract
says, per organization, per key and per address, server-wide across worker
processes, and the SDK carried through them by its own retries), shedding past
the queue timeout, and bodies that cannot lock anyone out."""

import json
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from helpers import Server, new_database, run_app
from dbtools import BACKENDS, query

pytestmark = pytest.mark.live

URL = "/agent/v0/pods"
KEY = "pods_fair-share-test-key-0123456789abcdefghijk"  # PODS_API_KEY: organization "default"
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
NEW_KEYS_KNOWN_WITHIN = 2.0  # seconds: a look for new keys each second, and a margin


def start(tmp_path, *flags, db=None, **kwargs) -> Server:
    return Server(db or tmp_path / "fair.db", *flags, env={"PODS_API_KEY": KEY}, workdir=tmp_path, **kwargs)


def org_key(server, org: str, pod: str | None = None) -> str:
    args = ["keys", "create", "--org", org, "--db", server.db] + (["--pod", pod] if pod else [])
    result = run_app(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def assert_429(r: httpx.Response) -> float:
    """The contract's 429; returns the seconds Retry-After-Ms asks for."""
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["name"] == "RateLimitError" and body["code"] == "rate_limit_exceeded"
    assert body["message"] and body["fix"] and set(body) >= {"name", "code", "message", "fix"}
    seconds, ms = int(r.headers["Retry-After"]), int(r.headers["Retry-After-Ms"])
    assert seconds >= 1 and ms >= 1 and seconds == max(1, -(-ms // 1000))  # whole seconds, rounded up
    assert r.headers["RateLimit-Remaining"] == "0"
    assert int(r.headers["RateLimit-Limit"]) >= 1 and int(r.headers["RateLimit-Reset"]) >= 0
    assert r.headers["X-Request-Id"]
    return ms / 1000


@pytest.mark.parametrize("args, says", [
    (["--rate-limit", "ten a second"], "is not a rate"),
    (["--key-rate-limit", "5/h"], "is not a rate"),
    (["--rate-burst", "5"], "--rate-burst needs --rate-limit"),
    (["--key-rate-burst", "5", "--rate-limit", "5/s"], "--key-rate-burst needs --key-rate-limit"),
])
def test_a_rate_that_is_not_one_or_a_burst_without_its_rate_is_refused_at_start(tmp_path, args, says):
    result = run_app("--db", str(tmp_path / "never.db"), "--port", "0", *args, timeout=30)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "never.db").exists()


def test_limits_are_off_by_default(tmp_path):
    s = start(tmp_path)
    try:
        with httpx.Client(base_url=s.url, headers=auth(KEY)) as c:
            answers = [c.get(URL) for _ in range(60)]
        assert {r.status_code for r in answers} == {200}
        assert not any(name in r.headers for r in answers for name in RATE_HEADERS)
    finally:
        assert s.stop() == 0


def test_a_burst_is_served_up_to_burst_plus_rate_times_time_the_rest_429_and_waiting_is_enough(tmp_path):
    s = start(tmp_path, "--rate-limit", "10/s", "--rate-burst", "5")
    try:
        with httpx.Client(base_url=s.url, headers=auth(KEY)) as c:
            started = time.monotonic()
            answers = []
            while time.monotonic() - started < 1.0:
                answers.append(c.get(URL))
            elapsed = time.monotonic() - started
            served = [r for r in answers if r.status_code == 200]
            assert 5 <= len(served) <= 5 + 10 * elapsed + 1
            refused = [r for r in answers if r.status_code != 200]
            assert refused
            for r in refused:
                assert_429(r)
            # Every answer under the limit says where the client stands.
            assert all(name in r.headers for r in answers for name in RATE_HEADERS)
            assert served[0].headers["RateLimit-Limit"] == "5"
            # A client that waits exactly Retry-After-Ms is served.
            r = c.get(URL)
            while r.status_code == 200:
                r = c.get(URL)
            time.sleep(assert_429(r))
            assert c.get(URL).status_code == 200
            # /healthz and the OpenAPI document are never limited, and say nothing of limits.
            for path in ("/healthz", "/agent/v0/openapi.json"):
                for _ in range(20):
                    r = c.get(path)
                    assert r.status_code == 200 and "RateLimit-Limit" not in r.headers
    finally:
        assert s.stop() == 0
    # A refused request is logged like every other answer, with its organization.
    lines = [line for line in s.stderr.splitlines() if " pods.access GET /agent/v0/pods 429 " in line]
    assert lines and all(" org=default " in line for line in lines)


def test_the_keys_of_one_organization_share_its_budget_and_another_organization_is_never_refused(tmp_path):
    s = start(tmp_path, "--rate-limit", "5/min", "--rate-burst", "6")
    try:
        acme = [org_key(s, "acme") for _ in range(3)]
        globex = org_key(s, "globex")
        counts = {"acme": 0, "globex": 0}
        with httpx.Client(base_url=s.url) as c:
            for round_no in range(5):
                for token in acme:
                    r = c.get(URL, headers=auth(token))
                    if r.status_code == 200:
                        counts["acme"] += 1
                    else:
                        assert_429(r)
                r = c.get(URL, headers=auth(globex))
                assert r.status_code == 200, r.text  # under its own limit (5 of 6): never refused
                counts["globex"] += 1
        # Three keys, fifteen requests, one budget of six (a key's first request,
        # before this server has seen it, may count against the client's address).
        assert 6 <= counts["acme"] <= 6 + 3
        assert counts["globex"] == 5
    finally:
        assert s.stop() == 0


def test_unknown_keys_are_limited_by_address_while_a_valid_key_from_it_still_works(tmp_path):
    s = start(tmp_path, "--rate-limit", "4/min", "--rate-burst", "4")
    try:
        with httpx.Client(base_url=s.url) as c:
            guesses = [c.get(URL, headers=auth(f"pods_guess-{i}")) for i in range(10)]
            assert [r.status_code for r in guesses[:4]] == [401] * 4  # the address's burst: 4
            for r in guesses[4:]:
                assert_429(r)  # guessing is throttled: no more answers about keys
            assert c.get(URL).status_code == 429  # no key at all: the same address's budget
            for _ in range(3):
                assert c.get(URL, headers=auth(KEY)).status_code == 200  # its organization's own budget
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_key_made_after_start_is_served_from_an_address_refused_for_guessing(backend, tmp_path, request):
    """A key the server had not served yet used to count as unknown: from an address
    whose budget guesses had spent, it was refused for as long as they went on. Now a
    key made over the API is known at once by the process that made it, and one made
    anywhere else (the CLI, another worker) by every process within a second."""
    db = new_database(backend, tmp_path, request)
    # A burst of 20 and next to no refill: the address, once spent, stays spent
    # for the test, so every 200 below came from an organization's budget.
    s = start(tmp_path, "--rate-limit", "1/min", "--rate-burst", "20", "--workers", "2", db=db)

    def get(token: str) -> httpx.Response:
        # A new connection each: the kernel spreads them over both worker processes.
        return httpx.get(s.url + URL, headers={**auth(token), "Connection": "close"})

    try:
        guesses = [get(f"pods_guess-{i}").status_code for i in range(24)]
        assert guesses[:20] == [401] * 20 and guesses[20:] == [429] * 4
        with httpx.Client(base_url=s.url, headers=auth(KEY)) as c:
            made = c.post("/agent/v0/api-keys", json={"name": "new agent"})
            assert made.status_code == 200, made.text
            token = made.json()["api_key"]
            # The process that made it knows it at once (the same connection).
            assert c.get(URL, headers=auth(token)).status_code == 200
        time.sleep(NEW_KEYS_KNOWN_WITHIN)
        assert [get(token).status_code for _ in range(8)] == [200] * 8  # in every process
        from_cli = org_key(s, "acme")  # made by another process altogether
        time.sleep(NEW_KEYS_KNOWN_WITHIN)
        assert [get(from_cli).status_code for _ in range(8)] == [200] * 8
        assert get("pods_guess-again").status_code == 429  # the address still spent
    finally:
        assert s.stop() == 0


def test_a_per_key_limit_caps_one_key_while_another_key_of_its_organization_is_served(tmp_path):
    s = start(tmp_path, "--key-rate-limit", "2/min", "--key-rate-burst", "2")
    try:
        agent_1, agent_2 = org_key(s, "platform"), org_key(s, "platform")
        time.sleep(NEW_KEYS_KNOWN_WITHIN)  # made by the CLI: the server learns whose they are
        with httpx.Client(base_url=s.url) as c:
            one = [c.get(URL, headers=auth(agent_1)).status_code for _ in range(3)]
            assert one == [200, 200, 429]
            two = [c.get(URL, headers=auth(agent_2)).status_code for _ in range(3)]
            assert two == [200, 200, 429]  # its own budget, untouched by agent_1's
    finally:
        assert s.stop() == 0


def test_with_two_worker_processes_the_limit_holds_for_the_server_as_a_whole(tmp_path):
    s = start(tmp_path, "--workers", "2", "--rate-limit", "1/min", "--rate-burst", "10")
    try:
        # A new connection per request: the kernel spreads them over both workers.
        answers = [httpx.get(s.url + URL, headers={**auth(KEY), "Connection": "close"}) for _ in range(40)]
        served = sum(r.status_code == 200 for r in answers)
        # One budget of 10 for the whole server (each process with its own would serve
        # about 20); the key's very first request at each worker, before that worker
        # knew it, may have come from the address's budget instead.
        assert 10 <= served <= 11, [r.status_code for r in answers]
        for r in answers:
            if r.status_code != 200:
                assert_429(r)
    finally:
        assert s.stop() == 0


def test_the_sdk_with_its_default_retries_carries_fifteen_calls_through_five_a_second(tmp_path):
    s = start(tmp_path, "--rate-limit", "5/s")
    try:
        environment = AgentMailEnvironment(http=s.url + "/agent", websockets="ws://unused")
        with httpx.Client(timeout=30) as transport:
            client = AgentMail(api_key=KEY, environment=environment, httpx_client=transport)
            started = time.monotonic()
            made = [client.pods.create(client_id=f"sdk-{i}") for i in range(15)]
            elapsed = time.monotonic() - started
        assert len({pod.pod_id for pod in made}) == 15
        assert elapsed < 10
    finally:
        assert s.stop() == 0
    assert " 429 " in s.stderr  # it was limited, and retried its way through



def test_a_429_reaches_the_sdk_with_its_code_and_fix(tmp_path):
    with start(tmp_path, "--rate-limit", "1/min") as s:
        environment = AgentMailEnvironment(http=s.url + "/agent", websockets="ws://unused")
        with httpx.Client(timeout=30) as transport:
            client = AgentMail(api_key=KEY, environment=environment, httpx_client=transport)
            client.pods.list()  # the one request a burst of one allows
            with pytest.raises(ApiError) as caught:
                client.pods.list(request_options={"max_retries": 0})
    assert caught.value.status_code == 429
    body = caught.value.body if isinstance(caught.value.body, dict) else caught.value.body.model_dump()
    assert body["code"] == "rate_limit_exceeded" and "Retry-After" in body["fix"]

# -- shedding ------------------------------------------------------------------------------


def hold_the_write_lock(backend: str, db: str):
    """Take the database's write lock on pods' tables from outside; returns release()."""
    if backend == "sqlite":
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        conn = psycopg.connect(db)
        conn.execute("LOCK TABLE pod IN ACCESS EXCLUSIVE MODE")

    def release():
        conn.rollback() if backend != "sqlite" else conn.execute("ROLLBACK")
        conn.close()

    return release


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_that_waited_past_the_queue_timeout_get_503_and_a_shed_create_creates_nothing(
        backend, tmp_path, request):
    db = new_database(backend, tmp_path, request)
    s = start(tmp_path, "--threads", "1", "--queue-timeout", "0.5", db=db)
    release = None
    try:
        with httpx.Client(base_url=s.url, headers=auth(KEY)) as c:
            assert c.post(URL, json={"client_id": "before"}).status_code == 200
        release = hold_the_write_lock(backend, db)

        def create(client_id):
            with httpx.Client(base_url=s.url, headers=auth(KEY), timeout=30) as c:
                started = time.monotonic()
                r = c.post(URL, json={"client_id": client_id})
                return client_id, r, time.monotonic() - started

        with ThreadPoolExecutor(4) as pool:
            blocked = pool.submit(create, "blocked")  # takes the one thread, waits for the lock
            time.sleep(0.3)
            queued = [pool.submit(create, f"queued-{i}") for i in range(3)]
            shed = [f.result() for f in queued]
            release()
            release = None
            first = blocked.result()
        for client_id, r, took in shed:
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1
            body = r.json()
            assert body["name"] == "ServiceUnavailableError" and body["code"] == "service_unavailable"
            assert body["fix"]
            assert took < 4  # answered once past the timeout, not when the thread came free
        # The blocked create ran: 200, or the database's own 503 (with Retry-After too).
        assert first[1].status_code == 200 or (first[1].status_code == 503 and "Retry-After" in first[1].headers)
        with httpx.Client(base_url=s.url, headers=auth(KEY)) as c:
            listed = {p["client_id"] for p in c.get(URL, params={"limit": 100}).json()["pods"]}
        assert not {client_id for client_id, _, _ in shed} & listed  # shed: not executed
        assert "before" in listed
    finally:
        if release is not None:
            release()
        assert s.stop() == 0
    logged = [line for line in s.stderr.splitlines() if " pods.access POST /agent/v0/pods 503 " in line]
    assert len(logged) >= 3


def test_a_database_that_is_not_answering_says_when_to_retry_postgres(tmp_path, request):
    """Every 503 carries Retry-After: also the database's own (here /healthz's, with
    a table locked past its half-second wait)."""
    db = new_database("postgres", tmp_path, request)
    s = start(tmp_path, db=db)
    release = None
    try:
        release = hold_the_write_lock("postgres", db)
        r = httpx.get(s.url + "/healthz", timeout=10)
        assert r.status_code == 503 and r.json()["code"] == "service_unavailable"
        assert r.headers["Retry-After"] == "1"
        release()
        release = None
        assert httpx.get(s.url + "/healthz", timeout=10).status_code == 200
    finally:
        if release is not None:
            release()
        assert s.stop() == 0


# -- bodies cannot lock anyone out -----------------------------------------------------------


def slow_uploader(port: int, authorization: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /agent/v0/pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + authorization + b"Content-Length: 65536\r\n\r\n")
    return sock


@pytest.mark.parametrize("who", ["no key", "an unknown key", "a valid key"])
def test_slow_bodies_cannot_lock_a_polite_client_out(tmp_path, who):
    """The lock-out of the issue: at --connection-limit 20 and --header-timeout 3,
    20 connections each announce a 64 KiB body and send one byte of it every 2 s
    (and reconnect when closed). A polite client's /healthz is answered within
    seconds, every time."""
    s = start(tmp_path, "--connection-limit", "20", "--header-timeout", "3")
    authorization = {"no key": b"", "an unknown key": b"Authorization: Bearer pods_not-a-key\r\n",
                     "a valid key": b"Authorization: Bearer " + KEY.encode() + b"\r\n"}[who]
    stop = threading.Event()
    attackers: list[socket.socket] = []
    lock = threading.Lock()

    def attack():
        while not stop.is_set():
            with lock:
                live = []
                for sock in attackers:
                    try:
                        sock.send(b" ")
                        live.append(sock)
                    except OSError:
                        sock.close()
                attackers[:] = live
            while len(attackers) < 20 and not stop.is_set():
                try:
                    sock = slow_uploader(s.port, authorization)
                except OSError:
                    break
                with lock:
                    attackers.append(sock)
            stop.wait(2)

    thread = threading.Thread(target=attack, daemon=True)
    try:
        thread.start()
        time.sleep(1.0)
        waits = []
        for _ in range(4):  # over more than one of the attackers' 2-second cycles
            started = time.monotonic()
            r = httpx.get(s.url + "/healthz", timeout=10)
            waits.append(time.monotonic() - started)
            assert r.status_code == 200
            time.sleep(0.5)
        assert max(waits) < 4, waits
    finally:
        stop.set()
        thread.join(timeout=5)
        for sock in attackers:
            sock.close()
        assert s.stop() == 0


def test_a_body_with_no_key_is_answered_401_as_soon_as_its_head_is_in(tmp_path):
    s = start(tmp_path)
    try:
        for authorization in (b"", b"Authorization: Basic dTpw\r\n", b"Authorization: Bearer pods_not-a-key\r\n"):
            sock = slow_uploader(s.port, authorization)  # the head, and not one byte of the body
            sock.settimeout(5)
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 401 "), answer
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"Connection: close" in head and json.loads(body)["name"] == "UnauthorizedError"
            sock.close()
        # A valid key's body is read and served as ever.
        with httpx.Client(base_url=s.url, headers=auth(KEY)) as c:
            assert c.post(URL, json={"client_id": "after"}).status_code == 200
            # ... and so is a new key's, made after the server started (looked up once).
            token = org_key(s, "newcomer")
            r = c.post(URL, json={"client_id": "newcomer-1"}, headers=auth(token))
            assert r.status_code == 200 and r.json()["client_id"] == "newcomer-1"
    finally:
        assert s.stop() == 0
    assert query(s.db, "SELECT count(*) FROM pod") == [(2,)]
