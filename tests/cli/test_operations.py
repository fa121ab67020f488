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

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import storage_of
from dbtools import query
from live import APP, Server, run_app

from pods import close_app, create_app
from pods.storage import sqlite as db
from pods.api.accesslog import new_request_id
from pods.api.auth import hash_key
from pods.storage import is_url
from pods.cli import cli
from pods.serving.server import QueueDepthSummary

URL = "/agent/v0/pods"
FIXTURE_V1 = Path(__file__).parent.parent / "fixtures" / "v1.db"


def pods_in(database):
    return {r[0]: r[1:] for r in query(database, "SELECT pod_id, name, client_id, created_at FROM pod")}


def integrity(database):
    """SQLite's integrity check; PostgreSQL checks its own pages."""
    return [("ok",)] if is_url(database) else query(database, "PRAGMA integrity_check")


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_cli(*args):
    """A command run in this process (for what needs a working directory or a umask)."""
    return CliRunner().invoke(cli, list(args))


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- graceful shutdown ---------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(database, tmp_path):
    s = Server(database, workdir=tmp_path)
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
    # SQLite: the WAL was folded back into the database file.
    assert not os.path.exists(s.db + "-wal") or os.path.getsize(s.db + "-wal") == 0


def test_shutdown_does_not_wait_for_a_reader_and_loses_nothing_sqlite(tmp_path):
    s = Server(tmp_path / "read.db")
    token = s.bootstrap_token
    pod = httpx.post(s.url + URL, json={"name": "kept"}, headers=auth(token)).json()
    reader = sqlite3.connect(s.db, isolation_level=None)  # a backup, Litestream, an operator's shell
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM pod").fetchone()  # holds a read transaction on the WAL
    try:
        started = time.monotonic()
        assert s.stop() == 0
        stopped_in = time.monotonic() - started
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert stopped_in < db.BUSY_TIMEOUT_MS / 1000  # it used to wait out the whole busy timeout
    warnings = [line for line in s.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and " WARNING pods.db WAL not truncated: " in warnings[0]
    assert integrity(s.db) == [("ok",)]
    again = Server(s.db)
    try:
        assert httpx.get(f"{again.url}{URL}/{pod['pod_id']}", headers=auth(token)).json() == pod
    finally:
        assert again.stop() == 0


@pytest.mark.parametrize("workers,sig", [(1, signal.SIGTERM), (2, signal.SIGTERM), (1, signal.SIGINT)])
def test_a_signal_during_a_burst_loses_no_acknowledged_write(database, tmp_path, workers, sig):
    s = Server(database, "--workers", str(workers), workdir=tmp_path)
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


def test_backup_under_write_load_restores_every_acknowledged_pod_sqlite(tmp_path):
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


def test_check_passes_a_sound_database_and_fails_a_damaged_one_sqlite(tmp_path):
    path = str(tmp_path / "c.db")
    assert run_app("init", "--db", path).returncode == 0
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
def test_commands_on_a_file_that_is_not_a_database_fail_in_one_line_sqlite(tmp_path, command):
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just some text " * 100)
    result = run_app(*command, "--db", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: database {path}: file is not a database"]


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A database ``pods.db`` in the working directory, as a server leaves it: a key,
    three pods, and (the server still running) a connection holding the WAL open."""
    monkeypatch.chdir(tmp_path)
    assert run_cli("init").exit_code == 0
    storage = storage_of(create_app({"DB": "pods.db"}))
    org_id = storage.connection().execute("SELECT org_id FROM organization").fetchone()[0]
    for name in ("a", "b", "c"):
        storage.insert_pod(org_id, name, None)
    yield "pods.db"
    storage.close()


def pods_and_keys(path):
    conn = sqlite3.connect(path)
    try:
        return [conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in ("pod", "api_key")]
    finally:
        conn.close()


@pytest.mark.parametrize("db_flag,dest", [
    (None, "pods.db"),  # "back up pods.db", with the default --db pods.db
    (None, "./pods.db"),
    (None, "{cwd}/pods.db"),
    (None, "sub/../pods.db"),
    (None, "link.db"),  # a symlink to the database
    (None, "hard.db"),  # a hard link to it
    (None, "pods.db-wal"),
    (None, "./pods.db-shm"),
    (None, "pods.db-journal"),  # there is none in WAL mode: compared by path
    ("link.db", "pods.db"),
    ("link.db", "pods.db-wal"),  # SQLite names the companions after the real file, not the link
    ("{cwd}/pods.db", "shm-link"),  # a symlink to a companion
])
def test_backup_refuses_the_database_and_its_companions_however_spelled_sqlite(served, tmp_path, db_flag, dest):
    os.symlink("pods.db", "link.db")
    os.link("pods.db", "hard.db")
    os.mkdir("sub")
    os.symlink("pods.db-shm", "shm-link")
    before = pods_and_keys("pods.db")
    files = sorted(os.listdir())
    args = ["backup", dest.format(cwd=tmp_path)] + (["--db", db_flag.format(cwd=tmp_path)] if db_flag else [])
    line = one_line_error(run_cli(*args))
    assert "being backed up" in line and "choose another path" in line
    assert pods_and_keys("pods.db") == before and len(before[0]) == 3
    assert sorted(os.listdir()) == files
    assert integrity("pods.db") == [("ok",)]


def test_backup_replaces_an_existing_file_only_with_force_sqlite(served):
    Path("precious.db").write_bytes(b"an earlier backup, or anything else")
    line = one_line_error(run_cli("backup", "precious.db"))
    assert line == "Error: precious.db exists; add --force to replace it"
    assert Path("precious.db").read_bytes() == b"an earlier backup, or anything else"
    result = run_cli("backup", "precious.db", "--force")
    assert result.exit_code == 0, result.output
    assert pods_and_keys("precious.db") == pods_and_keys("pods.db")


def test_nightly_backups_replace_the_last_one_and_leave_one_file_sqlite(served, tmp_path):
    for _ in range(3):  # backup, then check reads the copy, then the next night's backup --force
        result = run_cli("backup", "nightly.db", "--force")
        assert result.exit_code == 0, result.output
        assert run_app("check", "--db", "nightly.db").stdout.strip().endswith(": ok")
        assert sorted(p for p in os.listdir() if p.startswith("nightly")) == ["nightly.db"]
    assert pods_and_keys("nightly.db") == pods_and_keys("pods.db")
    restored = str(tmp_path / "restored.db")
    shutil.copy("nightly.db", restored)
    close_app(create_app({"DB": restored}))  # restored: served as it is, in WAL mode again
    assert sqlite3.connect(restored).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert pods_and_keys(restored) == pods_and_keys("pods.db")


def test_backup_refuses_a_destination_with_companion_files_or_a_partial_copy_sqlite(served):
    Path("busy.db-wal").write_bytes(b"another database's log")
    line = one_line_error(run_cli("backup", "busy.db"))
    assert line.startswith("Error: busy.db-wal exists: busy.db may be a database in use")
    Path("stale.db.partial").write_bytes(b"left by a backup that was killed")
    line = one_line_error(run_cli("backup", "stale.db"))
    assert line == "Error: stale.db.partial exists, left by an interrupted backup; remove it and run again"
    assert Path("stale.db.partial").read_bytes() == b"left by a backup that was killed"
    assert not os.path.exists("busy.db") and not os.path.exists("stale.db")


def test_backup_and_check_read_an_older_schema_as_it_is_sqlite(tmp_path):
    old = str(tmp_path / "old.db")
    shutil.copy(FIXTURE_V1, old)
    before = digest(old)
    checked = run_app("check", "--db", old)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{old}: ok (schema version 1, older than this pods' {db.SCHEMA_VERSION}")
    copy = str(tmp_path / "copy.db")
    backed_up = run_app("backup", copy, "--db", old)
    assert backed_up.returncode == 0, backed_up.stderr
    assert backed_up.stdout == f"Backed up {old} to {copy}: 36 pods, integrity ok.\n"
    assert digest(old) == before  # not upgraded, not switched to WAL, not touched
    assert sorted(os.listdir(tmp_path)) == ["copy.db", "old.db"]
    assert pods_and_keys(copy) == pods_and_keys(old)
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    finally:
        conn.close()


def sqlite_file(path, *statements):
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


NOT_PODS_DATABASES = {
    "empty-file": (lambda p: p.write_bytes(b""), "is an empty file, not a pods database"),
    "empty-sqlite": (lambda p: sqlite_file(p, "CREATE TABLE t (x)", "DROP TABLE t"),
                     "is an empty SQLite database, not a pods database"),
    "another-programs": (lambda p: sqlite_file(p, "CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('hi')"),
                         "is not a pods database (schema version 0, tables: notes)"),
    "unknown-version": (lambda p: (shutil.copy(FIXTURE_V1, p), sqlite_file(p, "PRAGMA user_version = 99")),
                        "has schema version 99, newer than this server's"),
    "missing-table": (lambda p: (shutil.copy(FIXTURE_V1, p), sqlite_file(p, "DROP TABLE setting")),
                      "is not a pods database: schema version 1 without table(s) setting"),
    "missing-column-with-renamed-cases": (lambda p: (shutil.copy(FIXTURE_V1, p), sqlite_file(
        p, "ALTER TABLE pod RENAME COLUMN name TO title", "ALTER TABLE pod RENAME COLUMN client_id TO CLIENT_ID")),
        "is not a pods database: schema version 1 without column(s) pod.name"),  # CLIENT_ID is client_id to SQLite
    "missing-column": (lambda p: (shutil.copy(FIXTURE_V1, p), sqlite_file(p, "ALTER TABLE pod RENAME COLUMN name TO title")),
                       "is not a pods database: schema version 1 without column(s) pod.name"),
}


@pytest.mark.parametrize("kind", NOT_PODS_DATABASES)
@pytest.mark.parametrize("command", ["check", "backup"])
def test_check_and_backup_refuse_what_is_not_a_pods_database_sqlite(tmp_path, kind, command):
    make, words = NOT_PODS_DATABASES[kind]
    path = tmp_path / "restored.db"
    make(path)
    before = digest(path)
    args = ["check"] if command == "check" else ["backup", str(tmp_path / "copy.db")]
    assert_one_line_failure(run_app(*args, "--db", str(path)), f"Error: database {path} {words}")
    assert digest(path) == before
    assert sorted(os.listdir(tmp_path)) == ["restored.db"]


def test_serving_refuses_another_programs_sqlite_file_sqlite(tmp_path):
    path = tmp_path / "notes.db"
    sqlite_file(path, "CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('keep me')")
    before = digest(path)
    result = run_app("--port", "0", "--db", str(path), timeout=30)
    assert_one_line_failure(result, f"database {path} is not a pods database")
    assert digest(path) == before


# -- file modes -------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_databases_their_wal_files_and_backups_are_owner_only_sqlite(tmp_path, monkeypatch, umask):
    monkeypatch.chdir(tmp_path)
    def modes(*names):
        return {name: os.stat(name).st_mode & 0o777 for name in names}

    previous = os.umask(umask)
    try:
        storage = storage_of(create_app({"DB": "served.db"}))  # as serving creates it
        storage.insert_api_key("acme", hash_key("a-token"), "a-token")  # the WAL files exist now
        assert modes("served.db", "served.db-wal", "served.db-shm") == {
            "served.db": 0o600, "served.db-wal": 0o600, "served.db-shm": 0o600}
        assert run_cli("backup", "copy.db", "--db", "served.db").exit_code == 0
        storage.close()
        assert run_cli("init", "--db", "init.db").exit_code == 0
        assert modes("copy.db", "init.db") == {"copy.db": 0o600, "init.db": 0o600}
    finally:
        os.umask(previous)


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
    assert result.stdout == "" and os.listdir(tmp_path) == []  # no database made, no key shown for it


def test_database_path_unwritable_sqlite(tmp_path):
    result = run_app("--port", "0", "--db", str(tmp_path / "missing-dir" / "p.db"))
    assert_one_line_failure(result, "missing-dir/p.db: No such file or directory")


def test_database_that_is_not_a_database_sqlite(tmp_path):
    path = tmp_path / "p.db"
    path.write_bytes(os.urandom(8192))
    assert_one_line_failure(run_app("--port", "0", "--db", str(path)), "file is not a database")


def test_database_locked_beyond_the_busy_timeout_sqlite(tmp_path):
    path = str(tmp_path / "p.db")
    assert run_app("init", "--db", path).returncode == 0
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        result = run_app("--port", "0", "--db", path, env={"PODS_API_KEY": "a-token-whose-storing-needs-a-write"})
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_one_line_failure(result, "database is locked")
    assert waited >= 5  # it waited the busy timeout before giving up


def test_a_newer_schema_is_refused_in_one_line(database):
    assert run_app("init", "--db", database).returncode == 0
    if is_url(database):
        query(database, "UPDATE pods_schema SET version = 99")
    else:
        query(database, "PRAGMA user_version = 99")
    for command in (["--port", "0"], ["keys", "list"], ["check"]):
        assert_one_line_failure(run_app(*command, "--db", database), "schema version 99", "upgrade pods")


@pytest.mark.parametrize("token", [
    "x", "a" * 31,
    "é" * 40,  # a client's header is read as Latin-1: it could never match
    "a" * 40 + " ",  # HTTP trims the blank a client sends: it could never match
    "a" * 20 + " " + "a" * 20, "a" * 39 + "\x7f",
])
def test_a_pods_api_key_that_could_never_match_or_is_short_is_refused_at_start(tmp_path, token):
    path = tmp_path / "k.db"
    result = run_app("--port", "0", "--db", str(path), env={"PODS_API_KEY": token}, timeout=30)
    assert_one_line_failure(result, "PODS_API_KEY", "at least 32 visible ASCII characters",
                            "secrets.token_urlsafe(32)")
    assert token not in result.stderr
    assert not path.exists()


def test_servers_starting_together_on_a_new_database_make_one_first_key(database, tmp_path):
    servers = []
    threads = [threading.Thread(target=lambda: servers.append(Server(database, workdir=tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(servers) == 3
        printed = [token for s in servers for token in re.findall(r"^pods_\S+$", s.stdout, re.MULTILINE)]
        assert len(printed) == 1 and query(database, "SELECT count(*) FROM api_key") == [(1,)]
        assert httpx.get(servers[0].url + URL, headers={"Authorization": f"Bearer {printed[0]}"}).status_code == 200
    finally:
        for s in servers:
            assert s.stop() == 0


def test_a_first_start_with_stdout_closed_stores_no_key(tmp_path):
    path = tmp_path / "closed.db"
    closed = ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, APP, "--db", str(path)]
    result = subprocess.run([*closed, "--port", "0"], stderr=subprocess.PIPE, text=True, timeout=30)
    assert_one_line_failure(result, "stdout is closed", "nothing was stored")
    assert os.listdir(tmp_path) == []  # no database left behind: init can make it now
    # With a key of the operator's own, there is nothing to show: it serves.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "an-operator-token-of-at-least-32-characters"
    proc = subprocess.Popen([*closed, "--port", str(port)], stderr=subprocess.DEVNULL,
                            env={**os.environ, "PODS_API_KEY": token})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{URL}", headers=auth(token), timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert proc.poll() is None, "the server exited"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_unknown_pods_variables_change_nothing_and_get_one_warning(tmp_path):
    s = Server(tmp_path / "v.db", env={"PODS_MAX_CONTENT_LENGTH": "10", "PODS_TRHEADS": "4"})
    try:
        r = httpx.post(s.url + URL, json={"name": "n" * 200}, headers=auth(s.bootstrap_token))
        assert r.status_code == 200  # the contract's 64 KiB limit holds
    finally:
        assert s.stop() == 0
    warnings = [line for line in s.stderr.splitlines() if "unknown environment variable" in line]
    assert len(warnings) == 1
    assert " WARNING pods.cli ignoring unknown environment variable(s) PODS_MAX_CONTENT_LENGTH, PODS_TRHEADS " \
        in warnings[0]



# -- read-only commands change nothing; careless paths -----------------------------------


def test_read_only_commands_leave_a_crashed_servers_files_byte_for_byte_sqlite(tmp_path):
    """After a kill -9 the WAL holds the latest commits: check, keys list and backup
    read it without folding it back (a read-write connection closing last would)."""
    s = Server(tmp_path / "crashed.db", env={"PODS_API_KEY": "pods_read-only-test-key-0123456789abcdef"})
    httpx.post(s.url + "/agent/v0/pods", json={"name": "in the WAL"},
               headers={"Authorization": "Bearer pods_read-only-test-key-0123456789abcdef"})
    s.kill()
    files = sorted(p.name for p in tmp_path.glob("crashed.db*"))
    assert files == ["crashed.db", "crashed.db-shm", "crashed.db-wal"]
    before = {name: digest(tmp_path / name) for name in ("crashed.db", "crashed.db-wal")}
    for command in (["check"], ["keys", "list"], ["backup", str(tmp_path / "copy.db")]):
        result = run_app(*command, "--db", s.db)
        assert result.returncode == 0, result.stderr
        assert {name: digest(tmp_path / name) for name in before} == before, command
    copy = db.SQLiteStorage(str(tmp_path / "copy.db"))
    try:
        assert [row["name"] for row in copy.page_pods(1, False, None, 10)] == ["in the WAL"]
    finally:
        copy.close()


def test_a_key_shown_but_not_stored_is_called_void_sqlite(tmp_path, monkeypatch):
    """The commit after the token was printed fails (a full disk): the error says
    the token printed does not work."""
    path = str(tmp_path / "full.db")
    assert run_cli("init", "--db", path).exit_code == 0
    real = db.SQLiteStorage.insert_api_key

    def commit_fails(self, *args, before_commit=None, **kwargs):
        def then_fail(row):
            before_commit(row)
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, *args, before_commit=then_fail, **kwargs)

    monkeypatch.setattr(db.SQLiteStorage, "insert_api_key", commit_fails)
    result = run_cli("keys", "create", "--org", "z", "--db", path)
    assert result.stdout.splitlines()[-1].startswith("pods_")  # shown ...
    line = one_line_error(result)
    assert "database or disk is full" in line and "the key printed above was NOT stored" in line
    monkeypatch.undo()
    assert "\tz\t" not in run_cli("keys", "list", "--db", path).stdout  # ... and not stored


@pytest.mark.parametrize("db", ["", " ", ":memory:", "file:x.db"])
def test_a_db_that_names_no_file_is_refused(tmp_path, monkeypatch, db):
    monkeypatch.chdir(tmp_path)
    for command in (["init"], ["check"], ["keys", "list"]):
        result = run_cli(*command, "--db", db)
        assert result.exit_code == 2 and "--db" in result.stderr, result.output
    assert os.listdir(tmp_path) == []


def test_backup_refuses_an_empty_destination_and_a_partial_name_that_is_the_database_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init", "--db", "prod.partial").exit_code == 0
    result = run_cli("backup", "", "--db", "prod.partial")
    assert result.exit_code == 2 and "PATH" in result.stderr
    line = one_line_error(run_cli("backup", "prod", "--db", "prod.partial"))
    assert "prod.partial is the database being backed up" in line
    assert not {"prod", "prod.partial.partial", ".partial"} & set(os.listdir(tmp_path))


def test_the_same_database_spelled_two_ways_before_and_after_the_command_is_one_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init", "--db", "b.db").exit_code == 0
    result = run_cli("--db", "./b.db", "keys", "list", "--db", "b.db")
    assert result.exit_code == 0 and result.stdout.count("\t") == 7
