"""copy SOURCE DEST: everything, in one consistent read, between the two backends,
while a server writes to the source; keys and page tokens keep working at DEST."""

import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import new_database
from dbtools import query
from live import Server, run_app

URL = "/agent/v0/pods"
KEY = "pods_copy-test-key-0123456789abcdefghijklmnopqrs"
AUTH = {"Authorization": f"Bearer {KEY}"}
TABLES = ("organization", "api_key", "pod", "setting")


def everything(db):
    """Every row of every table, in a stable order (times as the API shows them)."""
    return {table: sorted(query(db, f"SELECT * FROM {table}"), key=repr) for table in TABLES}


def copy(source, dest):
    return run_app("copy", source, dest)


@pytest.mark.parametrize("source_backend,dest_backend", [("sqlite", "postgres"), ("postgres", "sqlite")])
def test_a_copy_taken_while_a_server_writes_holds_one_consistent_moment_and_works_at_dest(
        tmp_path, request, source_backend, dest_backend):
    source = new_database("postgres", None, request) if source_backend == "postgres" else str(tmp_path / "source.db")
    dest = new_database("postgres", None, request) if dest_backend == "postgres" else str(tmp_path / "dest.db")
    server = Server(source, env={"PODS_API_KEY": KEY}, workdir=tmp_path)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH) as c:
            before = [c.post(URL, json={"name": f"before {i}", "client_id": f"b{i}"}).json() for i in range(30)]
            scoped_pod = before[0]["pod_id"]
            scoped = c.post(f"{URL}/{scoped_pod}/api-keys", json={"name": "scoped"}).json()
            token = c.get(URL, params={"limit": 7}).json()["next_page_token"]
        stop, written = threading.Event(), []

        def writer():
            with httpx.Client(base_url=server.url, headers=AUTH) as c:
                while not stop.is_set():
                    written.append(c.post(URL, json={"name": "during"}).json())

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            time.sleep(0.3)
            result = copy(source, dest)
        finally:
            stop.set()
            thread.join()
    finally:
        assert server.stop() == 0
    assert result.returncode == 0, result.stderr
    assert written, "nothing was written during the copy"
    counts = {name: int(n) for name, n in re.findall(r"(organizations|keys|pods|settings) (\d+)", result.stdout)}
    copied = everything(dest)
    assert counts == {
        "organizations": len(copied["organization"]), "keys": len(copied["api_key"]),
        "pods": len(copied["pod"]), "settings": len(copied["setting"])}
    # One consistent moment: every pod from before, and some prefix of the writes since.
    source_rows = everything(source)
    assert set(copied["pod"]) <= set(source_rows["pod"])
    assert {p["pod_id"] for p in before} <= {row[0] for row in copied["pod"]}
    assert copied["setting"] == source_rows["setting"] and copied["organization"] == source_rows["organization"]
    if not dest.startswith("postgresql"):
        assert os.stat(dest).st_mode & 0o777 == 0o600
    # Keys, page tokens and every answer work at DEST as they did at SOURCE.
    served = Server(dest, env={"PODS_API_KEY": KEY}, workdir=tmp_path)
    try:
        with httpx.Client(base_url=served.url, headers=AUTH) as c:
            assert c.get(f"{URL}/{before[5]['pod_id']}").json() == before[5]
            page = c.get(URL, params={"limit": 7, "page_token": token})
            assert page.status_code == 200 and page.json()["count"] == 7
            assert c.post(URL, json={"client_id": "b3"}).json() == before[3]  # idempotency kept
        scoped_key = {"Authorization": f"Bearer {scoped['api_key']}"}
        assert [p["pod_id"] for p in httpx.get(served.url + URL, headers=scoped_key).json()["pods"]] == [scoped_pod]
        assert run_app("check", "--db", dest).returncode == 0
    finally:
        assert served.stop() == 0


def test_a_destination_holding_pods_data_is_refused_and_left_as_it_was(tmp_path, request, backend):
    source = str(tmp_path / "source.db")
    assert run_app("init", "--db", source).returncode == 0
    dest = new_database("postgres", None, request) if backend == "postgres" else str(tmp_path / "dest.db")
    assert run_app("init", "--db", dest).returncode == 0  # a key: pods data
    before = everything(dest)
    result = copy(source, dest)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "holds pods data (1 rows in organization, 1 rows in api_key" in result.stderr
    assert everything(dest) == before


def test_copy_refuses_the_source_as_its_destination(tmp_path):
    path = str(tmp_path / "same.db")
    assert run_app("init", "--db", path).returncode == 0
    result = copy(path, "./" + os.path.relpath(path))
    assert result.returncode == 1 and "SOURCE and DEST are the same database" in result.stderr


def test_a_missing_source_is_refused_and_nothing_is_created(tmp_path):
    result = copy(str(tmp_path / "missing.db"), str(tmp_path / "dest.db"))
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert os.listdir(tmp_path) == []



def test_an_older_destination_holding_pods_data_is_refused_before_it_is_migrated_sqlite(tmp_path):
    source = str(tmp_path / "source.db")
    assert run_app("init", "--db", source).returncode == 0
    dest = str(tmp_path / "old-v1.db")
    shutil.copy(Path(__file__).parent.parent / "fixtures" / "v1.db", dest)
    before = Path(dest).read_bytes()
    result = copy(source, dest)
    assert result.returncode == 1 and "holds pods data" in result.stderr, result.stderr
    assert "migrating" not in result.stderr
    assert Path(dest).read_bytes() == before  # still schema version 1, byte for byte
    assert query(dest, "PRAGMA user_version") == [(1,)]
