"""Metrics of real servers: one scrape sums every worker exactly, promtool accepts
the exposition, a real Prometheus scraping pods with --workers 2 finds exactly the
requests sent, and nothing a client sends becomes a label value.

promtool and Prometheus come from Debian's prometheus package (.ci/run installs
it); without them their tests are skipped, with the reason, except under CI=true,
where that fails them."""

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from helpers import Server, new_database, raw_request, wait_until
from metricstools import by_labels, label_values, samples, value

from pods.serving.metrics import METHODS

pytestmark = pytest.mark.live

URL = "/agent/v0/pods"
KEY = "pods_metrics-live-test-key-0123456789abcdefghijklmnopqrstuvwxyz"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROUTES = {  # every route template the app has
    "/healthz", "/agent/v0/openapi.json", "/agent/v0/pods", "/agent/v0/pods/{pod_id}",
    "/agent/v0/api-keys", "/agent/v0/api-keys/{api_key_id}", "/agent/v0/pods/{pod_id}/api-keys",
    "/agent/v0/pods/{pod_id}/api-keys/{api_key_id}",
}


def metrics_url(server: Server) -> str:
    return re.search(r"pods metrics on (http://\S+)", server.stdout).group(1)


def scrape(server: Server) -> dict:
    r = httpx.get(metrics_url(server), timeout=10)
    assert r.status_code == 200
    return samples(r.text)


def requests_by_route(found: dict) -> dict:
    return by_labels(found, "pods_http_requests_total", "method", "route", "status")


# With --workers, each worker folds its figures into the shared files once a second
# (one process folds them at every scrape): a scrape is up to about two seconds behind.
FOLDED_WITHIN = 2.5


def settled(server: Server) -> dict:
    """A scrape once every request answered so far is in it: one that did not change
    over FOLDED_WITHIN seconds (the test sends nothing meanwhile)."""
    found = scrape(server)
    while True:
        time.sleep(FOLDED_WITHIN)
        again = scrape(server)
        if requests_by_route(again) == requests_by_route(found):
            return again
        found = again


def moved_to(server: Server, before: dict, expected: dict) -> dict:
    """What moved since ``before``, once it is ``expected``, or as it is after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        moved_now = moved(requests_by_route(before), requests_by_route(scrape(server)))
        if moved_now == expected or time.monotonic() > deadline:
            return moved_now
        time.sleep(0.3)


def moved(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def tool(name: str) -> str:
    """The path of ``name``, from Debian's prometheus package; skip (fail under CI=true) without it."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request, tmp_path_factory):
    """pods with --workers 2 and metrics per organization, on each backend."""
    folder = tmp_path_factory.mktemp("metrics")
    db = new_database(request.param, folder, request)
    server = Server(db, "--workers", "2", "--metrics-port", "0", "--metrics-by-org",
                    env={"PODS_API_KEY": KEY}, workdir=folder)
    yield server
    assert server.stop() == 0


def test_one_scrape_sums_every_worker_exactly_by_route_and_status(served):
    pod_id = httpx.post(served.url + URL, json={"name": "kept"}, headers=AUTH).json()["pod_id"]
    before = settled(served)
    sent = {
        ("GET", URL, "200"): 12,
        ("POST", URL, "200"): 6,
        ("GET", "/agent/v0/pods/{pod_id}", "200"): 8,
        ("GET", "/agent/v0/pods/{pod_id}", "404"): 5,
        ("GET", URL, "401"): 4,
        ("GET", "unmatched", "404"): 3,
        ("GET", "/healthz", "200"): 2,
    }
    # A new connection each: the kernel spreads them over both workers (SO_REUSEPORT).
    calls = (
        [lambda: httpx.get(served.url + URL, headers=AUTH)] * 12
        + [lambda: httpx.post(served.url + URL, json={"name": "n"}, headers=AUTH)] * 6
        + [lambda: httpx.get(f"{served.url}{URL}/{pod_id}", headers=AUTH)] * 8
        + [lambda: httpx.get(f"{served.url}{URL}/missing", headers=AUTH)] * 5
        + [lambda: httpx.get(served.url + URL)] * 4
        + [lambda: httpx.get(served.url + "/no/such/route")] * 3
        + [lambda: httpx.get(served.url + "/healthz")] * 2
    )
    for call in calls:
        call()
    assert moved_to(served, before, sent) == sent
    after = scrape(served)
    assert value(after, "pods_org_http_requests_total", org="default") >= 12 + 6 + 8 + 5
    assert value(after, "pods_build_info", version=__import__("pods").__version__,
                 backend="postgresql" if served.db.startswith("postgresql") else "sqlite",
                 schema_version=str(__import__("pods.storage", fromlist=["open_storage"])
                                    .open_storage(served.db, read_only=True).target_version)) == 1
    # The whole server's processes: the parent and both workers.
    assert value(after, "process_open_fds") > 0 and value(after, "process_resident_memory_bytes") > 50e6
    if served.db.startswith("postgresql"):
        pool = by_labels(after, "pods_db_pool_connections", "state")
        assert pool[("idle",)] + pool[("in_use",)] >= 2  # one pool per worker, summed
        assert value(after, "pods_db_pool_max_connections") == 2 * (4 + 2)  # 4 threads + 2, per worker


def test_counts_of_pods_and_keys_follow_creates_and_deletes(served):
    def counts():
        found = scrape(served)
        return value(found, "pods_organizations"), value(found, "pods_api_keys"), value(found, "pods_pods")

    orgs, keys, pods = counts()
    created = [httpx.post(served.url + URL, json={"name": f"c{i}"}, headers=AUTH).json()["pod_id"] for i in range(3)]
    key = httpx.post(f"{served.url}{URL}/{created[0]}/api-keys", json={"name": "agent"}, headers=AUTH)
    assert key.status_code == 200
    assert counts() == (orgs, keys + 1, pods + 3)
    assert httpx.delete(f"{served.url}{URL}/{created[0]}", headers=AUTH).status_code == 200  # and its key
    assert httpx.delete(f"{served.url}{URL}/{created[1]}", headers=AUTH).status_code == 200
    assert counts() == (orgs, keys, pods + 1)


def test_hostile_requests_never_become_label_values(served):
    pod = httpx.post(served.url + URL, json={"name": "SECRET-NAME", "client_id": "SECRET-CLIENT"}, headers=AUTH).json()
    key = httpx.post(served.url + "/agent/v0/api-keys", json={"name": "SECRET-KEY-NAME"}, headers=AUTH).json()
    paths = [
        f"{URL}/{pod['pod_id']}", f"{URL}/{KEY}", f"/agent/v0/api-keys/{key['api_key_id']}", f"/{pod['pod_id']}",
        f"{URL}?page_token=SECRET-TOKEN", f"{URL}/x%0aSECRET%0d%0a", f"{URL}/%1b[31mSECRET", f"{URL}/%ff%feSECRET",
        f"{URL}/SECRET\"}}{{le=\"1\"", "/SECRET/../../etc", f"{URL}/{pod['pod_id']}/api-keys/SECRET/more",
        "//SECRET", "/metrics", "*",
    ]
    for path in paths:
        for method in ("GET", "DELETE", "SECRETMETHOD", "M-SEARCH", "X" * 200):
            request = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                       f"X-Request-Id: SECRET-RID\r\nConnection: close\r\n\r\n").encode()
            raw_request(served.url, request)
    raw_request(served.url, b"GET /SECRET\x1b[2J\xff HTTP/1.1\r\nHost: x\r\n\r\n")  # waitress refuses it
    raw_request(served.url, b"SECRET\r\n\r\n")
    settled(served)
    text = httpx.get(metrics_url(served)).text
    values = label_values(samples(text))
    assert values["method"] <= METHODS | {"other"}
    assert values["route"] <= ROUTES | {"unmatched", "http_error", "refused"}
    assert all(re.fullmatch(r"\d{3}", s) for s in values["status"])
    assert values["org"] == {"default"}
    for secret in ("SECRET", pod["pod_id"], key["api_key_id"], KEY, KEY[:12], "etc", "\\x", "%"):
        assert secret not in text


def test_waitress_refusals_are_counted_under_http_error(served):
    before = settled(served)
    assert raw_request(served.url, b"GARBAGE\r\n\r\n")[0] == 400
    assert raw_request(served.url, b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")[0] == 505
    big_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert raw_request(served.url, big_head)[0] == 431
    assert raw_request(served.url, b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n")[0] == 400  # HttpRules
    body = b"x" * (64 * 1024 + 1)
    r = httpx.post(served.url + URL, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    expected = {
        ("other", "http_error", "400"): 1,  # no method could be read
        ("GET", "http_error", "505"): 1,
        ("other", "http_error", "431"): 1,  # a head too large says nothing reliable about its method
        ("GET", "http_error", "400"): 1,
        ("POST", URL, "413"): 1,  # answered by the app, after authentication, for its route
    }
    assert moved_to(served, before, expected) == expected


def test_the_api_port_answers_404_to_metrics(served):
    for path in ("/metrics", "/metrics/"):
        r = httpx.get(served.url + path)
        assert r.status_code == 404 and r.json()["name"] == "NotFoundError"
    assert "pods_" not in r.text


def test_promtool_accepts_the_exposition(served):
    promtool = tool("promtool")
    httpx.get(served.url + URL, headers=AUTH)
    text = httpx.get(metrics_url(served)).text
    assert "pods_http_requests_total" in text
    # promtool lints the text format (names, suffixes, help, types) and exits 3 on any problem.
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Prometheus itself asks for OpenMetrics first: that parses too.
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    r = httpx.get(metrics_url(served), headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"pods_http_requests", "pods_http_request_duration_seconds", "pods_build_info"} <= families


# -- one process -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, one thread, SQLite; metrics set by their variables."""
    folder = tmp_path_factory.mktemp("single")
    server = Server(folder / "single.db", "--threads", "1",
                    env={"PODS_API_KEY": KEY, "PODS_METRICS_PORT": "0", "PODS_METRICS_HOST": "127.0.0.1",
                         "PODS_METRICS_BY_ORG": "1"})
    yield server
    assert server.stop() == 0


def test_promtool_accepts_one_processs_exposition(single):
    promtool = tool("promtool")
    httpx.get(single.url + URL, headers=AUTH)
    checked = subprocess.run([promtool, "check", "metrics"], input=httpx.get(metrics_url(single)).text,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_queue_wait_and_depth_while_the_only_thread_is_held_and_a_scrape_still_answers(single):
    """The one request thread waits on SQLite's write lock, held by another process;
    requests behind it queue, and a scrape answers meanwhile."""
    before = scrape(single)
    holder = sqlite3.connect(single.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    answers = []

    def call(method, path, **kwargs):
        answers.append(httpx.request(method, single.url + path, headers=AUTH, timeout=30, **kwargs).status_code)

    threads = [threading.Thread(target=call, args=("POST", URL), kwargs={"json": {"name": "waits"}})]
    threads[0].start()
    time.sleep(0.3)  # the create holds the thread
    threads += [threading.Thread(target=call, args=("GET", URL)) for _ in range(3)]
    for t in threads[1:]:
        t.start()
    try:
        time.sleep(1.5)  # sampled at least once meanwhile
        started = time.monotonic()
        during = scrape(single)
        assert time.monotonic() - started < 1  # the scrape does not wait for the held thread
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for t in threads:
        t.join(timeout=30)
    assert sorted(answers) == [200] * 4
    assert value(during, "pods_http_queue_depth") == 3
    connections = by_labels(during, "pods_http_connections", "state")
    assert connections[("mid_request",)] == 4
    after = scrape(single)
    waits = value(after, "pods_http_queue_wait_seconds_count") - value(before, "pods_http_queue_wait_seconds_count")
    assert waits >= 4  # and the scrapes' own requests are not among them: another listener
    slow = (value(after, "pods_http_queue_wait_seconds_count")
            - value(after, "pods_http_queue_wait_seconds_bucket", le="1.0"))
    assert slow == 3  # the three GETs waited more than a second for the thread
    assert value(after, "pods_http_queue_wait_seconds_sum") - value(before, "pods_http_queue_wait_seconds_sum") > 3
    assert value(after, "pods_db_operation_duration_seconds_count", operation="insert_pod") - value(
        after, "pods_db_operation_duration_seconds_bucket", operation="insert_pod", le="1.0") >= 1
    assert value(after, "pods_org_http_requests_total", org="default") >= 4


@pytest.mark.parametrize("given", [{}, {"PODS_METRICS_HOST": "0.0.0.0"}, {"PODS_METRICS_BY_ORG": "1"}])
def test_metrics_are_off_unless_a_port_is_given(given, tmp_path):
    server = Server(tmp_path / "off.db", env={"PODS_API_KEY": KEY, **given})
    try:
        assert "pods metrics on" not in server.stdout
        assert httpx.get(server.url + "/metrics").status_code == 404
        warned = "--metrics-host and --metrics-by-org do nothing without --metrics-port" in server.stderr
        assert warned == bool(given)
    finally:
        assert server.stop() == 0


def test_a_metrics_port_in_use_is_one_line_and_nothing_starts(tmp_path):
    from helpers import run_app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_app("--port", "0", "--db", str(tmp_path / "p.db"), "--metrics-port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: cannot listen on 127.0.0.1:{port} for metrics: "
                                                  "Address already in use"]
    assert not (tmp_path / "p.db").exists()


def test_an_empty_metrics_host_is_refused_not_every_interface(tmp_path):
    from helpers import run_app

    result = run_app("--port", "0", "--db", str(tmp_path / "p.db"), "--metrics-port", "0", "--metrics-host", "")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --metrics-host is empty: name the interface for the metrics (127.0.0.1 by default; 0.0.0.0 for "
        "every one)"]
    assert not (tmp_path / "p.db").exists()


def threads_of(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def test_scrapers_cannot_take_the_processs_threads_or_files(tmp_path):
    """Thirty connections to the metrics port, each sending part of a head and then
    nothing: eight are served (and cut at the scrape deadline, 10 s), the rest closed
    as they come; the API answers throughout; then scraping works again."""
    from pods.serving.exporter import MAX_SCRAPERS, SCRAPE_TIMEOUT

    with Server(tmp_path / "cap.db", "--metrics-port", "0", env={"PODS_API_KEY": KEY}, workdir=tmp_path) as server:
        host, port = urllib.parse.urlsplit(metrics_url(server)).netloc.rsplit(":", 1)
        threads_before = threads_of(server.proc.pid)
        started = time.monotonic()
        held = []
        for _ in range(30):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)

        def closed(sock) -> bool:
            sock.settimeout(0.05)
            try:
                return sock.recv(1) == b""
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True

        assert wait_until(lambda: sum(closed(s) for s in held) >= 30 - MAX_SCRAPERS, 5)
        time.sleep(0.5)
        assert sum(closed(s) for s in held) == 30 - MAX_SCRAPERS  # the eight still open
        r = httpx.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 200 and r.elapsed.total_seconds() < 1
        assert threads_of(server.proc.pid) <= threads_before + 2 * MAX_SCRAPERS  # a thread and a deadline each
        assert wait_until(lambda: all(closed(s) for s in held), SCRAPE_TIMEOUT + 5)
        assert SCRAPE_TIMEOUT - 1 < time.monotonic() - started < SCRAPE_TIMEOUT + 5
        for sock in held:
            sock.close()
        assert "pods_http_requests_total" in httpx.get(metrics_url(server), timeout=5).text


def test_scrapes_back_to_back_are_answered_a_tenth_of_a_second_apart(single):
    from pods.serving.exporter import MIN_SCRAPE_INTERVAL

    with httpx.Client(timeout=10) as client:
        client.get(metrics_url(single))
        started = time.monotonic()
        for _ in range(5):
            assert client.get(metrics_url(single)).status_code == 200
    assert time.monotonic() - started >= 5 * MIN_SCRAPE_INTERVAL * 0.95


# -- a real Prometheus -----------------------------------------------------------------------------


@contextmanager
def prometheus(target: str, folder: Path):
    """A Prometheus server scraping ``target`` (host:port) every second, on a free
    port, with its data in ``folder``; always stopped."""
    binary = tool("prometheus")
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: pods\n    static_configs:\n      - targets: ['{target}']\n"
    )
    log = open(folder / "prometheus.log", "w")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (folder / "prometheus.log").read_text()
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not get ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(prometheus_url: str, promql: str) -> list:
    r = httpx.get(prometheus_url + "/api/v1/query", params={"query": promql}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_prometheus_scraping_workers_finds_exactly_the_requests_sent(backend, tmp_path, request):
    tool("prometheus")
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    server = Server(new_database(backend, tmp_path, request), "--workers", "2", "--metrics-port", "0",
                    env={"PODS_API_KEY": KEY, "TMPDIR": str(private_tmp)}, workdir=tmp_path)
    try:
        # The workers' files: in a directory of their own, that only the server's user may enter.
        [files] = private_tmp.glob("pods-metrics-*")
        assert files.stat().st_mode & 0o777 == 0o700
        target = urllib.parse.urlsplit(metrics_url(server)).netloc
        (tmp_path / "prometheus").mkdir()
        with prometheus(target, tmp_path / "prometheus") as prom:
            pod_id = httpx.post(server.url + URL, json={"name": "p"}, headers=AUTH).json()["pod_id"]
            sent = {("POST", URL, "200"): 1}
            for _ in range(7):
                httpx.get(server.url + URL, headers=AUTH)
            for _ in range(4):
                httpx.get(f"{server.url}{URL}/{pod_id}", headers=AUTH)
            for _ in range(3):
                httpx.get(f"{server.url}{URL}/nope", headers=AUTH)
            for _ in range(2):
                httpx.get(server.url + URL)
            httpx.delete(f"{server.url}{URL}/{pod_id}", headers=AUTH)
            httpx.get(server.url + "/nothing/here")
            raw_request(server.url, b"GARBAGE\r\n\r\n")
            sent |= {("GET", URL, "200"): 7, ("GET", "/agent/v0/pods/{pod_id}", "200"): 4,
                     ("GET", "/agent/v0/pods/{pod_id}", "404"): 3, ("GET", URL, "401"): 2,
                     ("DELETE", "/agent/v0/pods/{pod_id}", "200"): 1, ("GET", "unmatched", "404"): 1,
                     ("other", "http_error", "400"): 1}
            promql = 'sum by (method, route, status) (pods_http_requests_total{job="pods", route!="/healthz"})'
            deadline = time.monotonic() + 60
            while True:
                found = {(r["metric"]["method"], r["metric"]["route"], r["metric"]["status"]): float(r["value"][1])
                         for r in query(prom, promql)}
                if found == sent or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert found == sent
            assert [float(r["value"][1]) for r in query(prom, 'up{job="pods"}')] == [1]
            [pods] = query(prom, "pods_pods")
            assert float(pods["value"][1]) == 0
    finally:
        assert server.stop() == 0
    assert list(private_tmp.iterdir()) == []  # removed at exit


def test_a_429_from_the_rate_limiter_is_counted_per_organization(tmp_path):
    with Server(str(tmp_path / "pods.db"), "--metrics-port", "0", "--metrics-by-org", "--rate-limit", "1/min",
                env={"PODS_API_KEY": KEY}, workdir=tmp_path) as server:
        headers = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(server.url + "/agent/v0/pods", headers=headers).status_code == 200
        assert httpx.get(server.url + "/agent/v0/pods", headers=headers).status_code == 429
        assert wait_until(lambda: value(scrape(server), "pods_rate_limited_total") == 1, 10)
        found = scrape(server)
        assert value(found, "pods_org_rate_limited_total", org="default") == 1
        assert value(found, "pods_shed_total") == 0
        # Never routed (decided from the head), never run: under a route name of its own.
        assert requests_by_route(found)[("GET", "refused", "429")] == 1
        assert requests_by_route(found)[("GET", "/agent/v0/pods", "200")] == 1


def test_shed_requests_are_counted_under_refused_with_their_wait(tmp_path):
    """The one thread held by SQLite's write lock (another process has it): three
    GETs behind it wait past --queue-timeout and are shed, 503, never run."""
    with Server(tmp_path / "shed.db", "--threads", "1", "--queue-timeout", "0.5", "--metrics-port", "0",
                env={"PODS_API_KEY": KEY}, workdir=tmp_path) as server:
        before = scrape(server)
        holder = sqlite3.connect(server.db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        answers: list[int] = []

        def call(method):
            answers.append(httpx.request(method, server.url + URL, headers=AUTH, timeout=30,
                                         **({"json": {"name": "held"}} if method == "POST" else {})).status_code)

        blocked = threading.Thread(target=call, args=("POST",))
        blocked.start()
        time.sleep(0.3)  # the create holds the thread
        queued = [threading.Thread(target=call, args=("GET",)) for _ in range(3)]
        for t in queued:
            t.start()
        for t in queued:
            t.join(timeout=30)
        holder.execute("ROLLBACK")
        holder.close()
        blocked.join(timeout=30)
        assert sorted(answers) == [200, 503, 503, 503]
        after = scrape(server)
    assert moved(requests_by_route(before), requests_by_route(after)) == {
        ("GET", "refused", "503"): 3, ("POST", "/agent/v0/pods", "200"): 1}
    assert value(after, "pods_shed_total") - value(before, "pods_shed_total") == 3
    assert value(after, "pods_rate_limited_total") == 0
    waits = value(after, "pods_http_queue_wait_seconds_count") - value(before, "pods_http_queue_wait_seconds_count")
    assert waits == 4
    over_half_a_second = (value(after, "pods_http_queue_wait_seconds_count")
                          - value(after, "pods_http_queue_wait_seconds_bucket", le="0.5"))
    assert over_half_a_second == 3  # each shed GET waited past the timeout


def test_a_request_answered_without_its_body_has_its_queue_wait(single):
    """A POST with no key is answered 401 from its head, its body never read
    (admission withholds it): it still waited for a thread, and that is observed."""
    before = scrape(single)
    head = (b"POST /agent/v0/pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\nConnection: close\r\n\r\n")
    assert raw_request(single.url, head)[0] == 401  # the body is never sent
    after = scrape(single)
    assert moved(requests_by_route(before), requests_by_route(after)) == {("POST", "/agent/v0/pods", "401"): 1}
    waits = value(after, "pods_http_queue_wait_seconds_count") - value(before, "pods_http_queue_wait_seconds_count")
    assert waits == 1


def test_the_replica_lag_is_a_gauge_with_replica_only(tmp_path):
    replica = tmp_path / "replica"
    with Server(tmp_path / "replicated.db", "--replica", f"file://{replica}", "--metrics-port", "0",
                env={"PODS_API_KEY": KEY}, workdir=tmp_path) as server:
        for i in range(5):
            assert httpx.post(server.url + URL, headers=AUTH, json={"name": f"p{i}"}).status_code == 200
        # Litestream sends about every second: the gauge follows /healthz's figure back under 2 s.
        def caught_up():
            found = scrape(server)
            return ("pods_replica_lag_seconds", ()) in found and value(found, "pods_replica_lag_seconds") < 2

        assert wait_until(caught_up, 20)
        lag = httpx.get(server.url + "/healthz").json()["replica_lag_seconds"]
        assert lag < 2
    with Server(tmp_path / "alone.db", "--metrics-port", "0", env={"PODS_API_KEY": KEY}, workdir=tmp_path) as plain:
        assert "pods_replica_lag_seconds" not in httpx.get(metrics_url(plain)).text
