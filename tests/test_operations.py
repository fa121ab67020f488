"""Running unattended: graceful shutdown, logs, backups, checks, clear failures."""

import logging
import os
import re
import signal
import socket
import sqlite3
import threading
import time
import warnings

import httpx
import pytest
from live import Server, run_app

from pods.accesslog import new_request_id
from pods.server import QueueDepthSummary

URL = "/agent/v0/pods"


def pods_in(path):
    conn = sqlite3.connect(path)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT pod_id, name, client_id, created_at FROM pod")}
    finally:
        conn.close()


def integrity(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def auth(token):
    return {"Authorization": f"Bearer {token}"}


# -- graceful shutdown ---------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(tmp_path):
    s = Server(tmp_path / "g.db")
    body = b'{"name": "in flight"}'
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.bootstrap_token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(head + body[:5])  # the request is under way ...
        time.sleep(0.2)
        s.proc.send_signal(signal.SIGTERM)  # ... when the signal arrives
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connections are taken
            socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
        sock.sendall(body[5:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head_out, _, body_out = answer.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 200")
    pod = httpx.Response(200, content=body_out).json()
    assert pod["name"] == "in flight"
    assert s.stop() == 0
    assert pod["pod_id"] in pods_in(s.db)
    assert "shutting down" in s.stderr and "stopped" in s.stderr
    assert "Traceback" not in s.stderr
    # The WAL was folded back into the database file.
    assert not os.path.exists(s.db + "-wal") or os.path.getsize(s.db + "-wal") == 0


@pytest.mark.parametrize("workers,sig", [(1, signal.SIGTERM), (2, signal.SIGTERM), (1, signal.SIGINT)])
def test_a_signal_during_a_burst_loses_no_acknowledged_write(tmp_path, workers, sig):
    s = Server(tmp_path / "burst.db", "--workers", str(workers))
    token = s.bootstrap_token
    acknowledged, failures, statuses = [], [], []
    stop = threading.Event()

    def client(n):
        with httpx.Client(base_url=s.url, headers=auth(token), timeout=10) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post(URL, json={"name": f"c{n}-{i}"})
                except httpx.TransportError as e:
                    failures.append(e)  # refused or closed: never acknowledged
                    time.sleep(0.01)
                    continue
                statuses.append(r.status_code)
                if r.status_code == 200:
                    acknowledged.append(r.json())
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.6)
    assert s.stop(sig) == 0
    stop.set()
    for t in threads:
        t.join()
    assert acknowledged, "the burst did not run"
    assert set(statuses) == {200}  # never a 5xx or an error answer
    stored = pods_in(s.db)
    for pod in acknowledged:
        assert stored[pod["pod_id"]] == (pod["name"], None, pod["created_at"])
    assert integrity(s.db) == [("ok",)]


# -- logs ----------------------------------------------------------------------

ACCESS_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO pods\.access "
    r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<ms>\d+\.\d)ms "
    r"request_id=(?P<rid>\S+) org=(?P<org>\S+) key=(?P<key>\S+) client=(?P<client>\S+)$"
)


def test_access_log_one_line_per_request_with_request_id_and_org(tmp_path):
    s = Server(tmp_path / "log.db")
    token = s.bootstrap_token
    try:
        r = httpx.get(s.url + URL, headers={**auth(token), "X-Request-Id": "trace-42"})
        assert r.headers["X-Request-Id"] == "trace-42"
        r = httpx.get(s.url + URL + "?page_token=secret-looking", headers={"X-Request-Id": "bad id; drop table!"})
        made = r.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        r = httpx.post(s.url + URL, headers={**auth(token), "X-Request-Id": "x" * 129}, json={})
        assert len(r.headers["X-Request-Id"]) == 32
    finally:
        assert s.stop() == 0
    lines = [m.groupdict() for m in map(ACCESS_LINE.match, s.stderr.splitlines()) if m]
    api = [line for line in lines if line["path"] != "/healthz"]
    assert [(x["method"], x["path"], x["status"], x["rid"], x["org"]) for x in api] == [
        ("GET", URL, "200", "trace-42", "default"),
        ("GET", URL, "401", made, "-"),
        ("POST", URL, "200", r.headers["X-Request-Id"], "default"),
    ]
    assert token not in s.stderr and "secret-looking" not in s.stderr


def test_made_request_ids_are_distinct_also_across_forked_workers(client):
    made = {client.get("/healthz").headers["X-Request-Id"] for _ in range(2000)}
    assert len(made) == 2000
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about forking a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # a worker, as --workers makes them
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    with os.fdopen(read) as from_worker:
        assert from_worker.read() != new_request_id()


def test_log_level_warning_leaves_out_the_access_log(tmp_path):
    s = Server(tmp_path / "quiet.db", "--log-level", "warning")
    httpx.get(s.url + URL, headers=auth(s.bootstrap_token))
    assert s.stop() == 0
    assert "pods.access" not in s.stderr


def queue_warning(depth):
    return logging.getLogger("test.queue").makeRecord(
        "waitress.queue", logging.WARNING, __file__, 0, "Task queue depth is %d", (depth,), None
    )


def test_waitress_queue_warnings_become_one_line_per_interval():
    summary = QueueDepthSummary(interval=60, min_depth=10)
    assert not any(summary.filter(queue_warning(d)) for d in [1, 2, 9, 3] * 100)  # ordinary queueing
    passed = []
    for depth in [1, 5, 12, 30, 2] * 200:
        record = queue_warning(depth)
        if summary.filter(record):
            passed.append(record.getMessage())
    assert len(passed) == 1
    assert "peak queue depth 12" in passed[0]
    summary.next_report = 0  # the interval has passed
    record = queue_warning(3)
    assert summary.filter(record)
    assert "peak queue depth 30" in record.getMessage()


# -- backups and checks -----------------------------------------------------------


def test_backup_under_write_load_restores_every_acknowledged_pod(tmp_path):
    s = Server(tmp_path / "live.db")
    token = s.bootstrap_token
    before = []
    with httpx.Client(base_url=s.url, headers=auth(token), timeout=10) as c:
        for i in range(200):
            before.append(c.post(URL, json={"name": f"b{i}", "client_id": f"c{i}"}).json())
    stop = threading.Event()
    during = []

    def writer():
        with httpx.Client(base_url=s.url, headers=auth(token), timeout=10) as c:
            while not stop.is_set():
                during.append(c.post(URL, json={}).json())

    w = threading.Thread(target=writer)
    w.start()
    try:
        time.sleep(0.2)
        dest = str(tmp_path / "backup.db")
        result = run_app("backup", dest, "--db", s.db)
    finally:
        stop.set()
        w.join()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Backed up {s.db} to {dest}:")
    assert during, "no writes ran during the backup"
    assert s.stop() == 0
    assert run_app("check", "--db", dest).returncode == 0
    # Restore: serve the copy and read every pod acknowledged before the backup.
    restored = Server(dest, env={"PODS_API_KEY": token})
    try:
        with httpx.Client(base_url=restored.url, headers=auth(token), timeout=10) as c:
            for pod in before:
                assert c.get(f"{URL}/{pod['pod_id']}").json() == pod
    finally:
        assert restored.stop() == 0


def test_check_passes_a_sound_database_and_fails_a_damaged_one(tmp_path):
    path = str(tmp_path / "c.db")
    assert run_app("keys", "create", "--org", "a", "--db", path).returncode == 0
    ok = run_app("check", "--db", path)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{path}: ok")

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")
    rows = [(f"p{i}", 1, "n" * 50, None, f"t{i}") for i in range(2000)]
    conn.executemany("INSERT INTO pod VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'pod_org_page'").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:  # scribble over the index's root page
        f.seek((root - 1) * page_size + 8)
        f.write(os.urandom(page_size - 8))
    bad = run_app("check", "--db", path)
    assert bad.returncode == 1
    # Either the check lists what it found, or SQLite refuses the damaged page outright.
    assert "is damaged" in bad.stderr or "database disk image is malformed" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", [["check"], ["keys", "list"], ["backup", "out.db"]])
def test_commands_on_a_file_that_is_not_a_database_fail_in_one_line(tmp_path, command):
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just some text " * 100)
    result = run_app(*command, "--db", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: database {path}: file is not a database"]


# -- clear failures at start --------------------------------------------------------


def assert_one_line_failure(result, *words):
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_app("--port", str(port), "--db", str(tmp_path / "p.db"))
    assert_one_line_failure(result, "cannot listen", str(port), "in use")


def test_database_path_unwritable(tmp_path):
    result = run_app("--port", "0", "--db", str(tmp_path / "missing-dir" / "p.db"))
    assert_one_line_failure(result, "unable to open database file")


def test_database_that_is_not_a_database(tmp_path):
    path = tmp_path / "p.db"
    path.write_bytes(os.urandom(8192))
    assert_one_line_failure(run_app("--port", "0", "--db", str(path)), "file is not a database")


def test_database_locked_beyond_the_busy_timeout(tmp_path):
    path = str(tmp_path / "p.db")
    assert run_app("keys", "create", "--org", "a", "--db", path).returncode == 0
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        result = run_app("--port", "0", "--db", path, env={"PODS_API_KEY": "needs-a-write"})
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_one_line_failure(result, "database is locked")
    assert waited >= 5  # it waited the busy timeout before giving up


def test_a_newer_schema_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "p.db")
    assert run_app("keys", "create", "--org", "a", "--db", path).returncode == 0
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert_one_line_failure(run_app("--port", "0", "--db", path), "schema version 99", "upgrade pods")


def test_an_unwritable_stderr_loses_the_log_line_not_the_answer(client, headers, sql, monkeypatch, caplog):
    closed = open(os.devnull, "w")
    closed.close()
    monkeypatch.setattr("sys.stderr", closed)
    caplog.set_level(logging.INFO, logger="pods.access")  # the line is attempted
    r = client.post("/agent/v0/pods", json={"name": "kept"}, headers=headers)
    assert r.status_code == 200 and r.json["name"] == "kept"
    assert sql("SELECT name FROM pod") == [("kept",)]
