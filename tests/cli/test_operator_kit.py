"""The operator's command line for running a service: keys with expiry and
permissions, listed as columns and as JSON, organizations listed, a new
organization announced; a key shown and stored, never one without the other; a
first start that stores nothing leaves nothing; every log line of --workers names
its worker."""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from click.testing import CliRunner
from live import APP, Server

from pods import close_app, create_app
from pods.api.auth import hash_key, new_token, token_prefix
from pods.cli import cli
from pods.storage import open_storage

KEY_ID = re.compile(r"[0-9a-f]{16}")
WORKER = re.compile(r" worker=(\d+)$")


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def usage_error(result, option: str) -> str:
    """The one ``Error:`` line of a refused option (exit 2), naming it."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and option in errors[0], result.stderr
    return errors[0]


@pytest.fixture
def db(database):
    """A database made by ``init`` on each backend, holding one key of "default"."""
    result = run("init", "--db", database)
    assert result.exit_code == 0, result.output
    return database


def create_key(db, *args, org="acme"):
    result = run("keys", "create", "--org", org, *args, "--db", db)
    assert result.exit_code == 0, result.output
    [token] = result.stdout.splitlines()  # the token alone on stdout
    return token, result.stderr


def keys(db) -> list[list[str]]:
    result = run("keys", "list", "--db", db)
    assert result.exit_code == 0, result.output
    return [line.split("\t") for line in result.stdout.splitlines()]


def keys_json(db) -> list[dict]:
    result = run("keys", "list", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def in_a_minute_of(stored: str, expected: datetime) -> bool:
    moment = datetime.strptime(stored, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return abs(moment - expected) < timedelta(minutes=1)


# -- keys list -----------------------------------------------------------------------


def test_keys_list_adds_expires_and_permissions_at_the_end_and_never_a_token(db):
    token, _ = create_key(db, "--permission", "pod_read", "--permission", "pod_create",
                          "--expires-at", "2030-01-01T00:00:00Z", "--name", "ci")
    rows = keys(db)
    assert [len(row) for row in rows] == [8, 8]
    first, made = rows
    assert first[1] == "default" and first[5:] == ["org", "-", "all"]
    assert KEY_ID.fullmatch(made[0]) and made[1] == "acme" and made[3] == "-"
    assert made[4:] == ["ci", "org", "2030-01-01T00:00:00.000000Z", "pod_read,pod_create"]
    listed = run("keys", "list", "--db", db).stdout + run("keys", "list", "--json", "--db", db).stdout
    assert token not in listed and token[12:] not in listed


def test_keys_list_json_is_one_object_per_key_with_the_same_facts(db):
    create_key(db, "--permission", "pod_delete", "--expires-in", "30d")
    rows, objects = keys(db), keys_json(db)
    assert [o["key_id"] for o in objects] == [row[0] for row in rows]
    assert list(objects[1]) == ["key_id", "organization", "created_at", "revoked_at", "name", "pod_id", "expires_at",
                                "permissions", "prefix", "used_at", "expired"]
    default, acme = objects
    assert (default["organization"], default["permissions"], default["expires_at"], default["pod_id"]) == (
        "default", None, None, None)
    assert (acme["organization"], acme["permissions"], acme["expired"], acme["revoked_at"]) == (
        "acme", ["pod_delete"], False, None)
    assert acme["name"] == acme["prefix"] and acme["prefix"].startswith("pods_")
    assert in_a_minute_of(acme["expires_at"], datetime.now(UTC) + timedelta(days=30))
    assert rows[1][6] == acme["expires_at"]


def test_an_expired_key_is_seen_as_expired(db):
    storage = open_storage(db)
    try:
        token = new_token()
        storage.insert_api_key("acme", hash_key(token), token_prefix(token), expires_at="2020-01-01T00:00:00.000000Z")
    finally:
        storage.close()
    assert keys(db)[1][6] == "2020-01-01T00:00:00.000000Z"
    assert keys_json(db)[1]["expired"] is True


def test_a_revoked_key_and_a_pod_key_are_listed_as_such(db):
    token, _ = create_key(db)
    app = create_app({"TESTING": True, "DB": db})
    try:
        client = app.test_client()
        pod = client.post("/agent/v0/pods", json={}, headers={"Authorization": f"Bearer {token}"}).json
    finally:
        close_app(app)
    create_key(db, "--pod", pod["pod_id"], "--permission", "pod_read")
    revoked = keys(db)[1][0]
    assert run("keys", "revoke", revoked, "--db", db).exit_code == 0
    rows = {row[0]: row for row in keys(db)}
    assert rows[revoked][3] != "-"
    [scoped] = [row for row in rows.values() if row[5] == pod["pod_id"]]
    assert scoped[6:] == ["-", "pod_read"]
    [listed] = [o for o in keys_json(db) if o["pod_id"] == pod["pod_id"]]
    assert listed["permissions"] == ["pod_read"]


# -- keys create: permissions and expiry ------------------------------------------------


def test_a_key_made_with_permissions_has_exactly_those(db):
    token, said = create_key(db, "--permission", "pod_read")
    assert "(permissions pod_read; no expiry)" in said
    app = create_app({"TESTING": True, "DB": db})
    try:
        client, auth = app.test_client(), {"Authorization": f"Bearer {token}"}
        assert client.get("/agent/v0/pods", headers=auth).status_code == 200
        refused = client.post("/agent/v0/pods", json={}, headers=auth)
        assert refused.status_code == 403 and "pod_create" in refused.json["message"]
    finally:
        close_app(app)


@pytest.mark.parametrize("value, says", [
    ("pod_reed", "'pod_reed' is not a permission name (did you mean pod_read?)"),
    ("POD_READ", "'POD_READ' is not a permission name (did you mean pod_read?)"),
    ("pod_read,pod_create", "give --permission once per name"),
    ("", "'' is not a permission name"),
    ("everything", "'everything' is not a permission name"),
])
def test_a_permission_the_api_does_not_know_is_refused_in_one_line(db, value, says):
    before = keys(db)
    line = usage_error(run("keys", "create", "--org", "acme", "--permission", value, "--db", db), "--permission")
    assert says in line and "pod_read, pod_create, pod_update, pod_delete" in line  # it lists the names
    assert keys(db) == before


@pytest.mark.parametrize("value, delta", [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                          ("90m", timedelta(minutes=90)), ("2w", timedelta(weeks=2)),
                                          ("45s", timedelta(seconds=45))])
def test_expires_in_sets_the_expiry_that_long_from_now(db, value, delta):
    create_key(db, "--expires-in", value)
    assert in_a_minute_of(keys(db)[1][6], datetime.now(UTC) + delta)


@pytest.mark.parametrize("value, says", [
    ("0d", "is not a duration"), ("30", "is not a duration"), ("d", "is not a duration"),
    ("1.5d", "is not a duration"), ("-1d", "is not a duration"), ("30 d", "is not a duration"),
    ("30D", "is not a duration"), ("1234567890d", "is not a duration"), ("999999999w", "ends after the year 9999"),
])
def test_a_bad_expires_in_is_refused_in_one_line(db, value, says):
    before = keys(db)
    assert says in usage_error(run("keys", "create", "--org", "acme", "--expires-in", value, "--db", db),
                               "--expires-in")
    assert keys(db) == before


@pytest.mark.parametrize("value, stored", [
    ("2030-01-01T00:00:00Z", "2030-01-01T00:00:00.000000Z"),
    ("2030-01-01T01:00:00+01:00", "2030-01-01T00:00:00.000000Z"),
    ("2030-01-01t00:00:00.25z", "2030-01-01T00:00:00.250000Z"),
])
def test_expires_at_takes_rfc_3339_in_the_future(db, value, stored):
    create_key(db, "--expires-at", value)
    assert keys(db)[1][6] == stored


@pytest.mark.parametrize("value, says", [
    ("2020-01-01T00:00:00Z", "is not in the future"),
    ("2030-01-01", "is not an RFC 3339 time with an offset"),
    ("2030-01-01T00:00:00", "is not an RFC 3339 time with an offset"),
    ("2030-01-01 00:00:00Z", "is not an RFC 3339 time with an offset"),
    ("2030-02-30T00:00:00Z", "is not an RFC 3339 time with an offset"),
    ("tomorrow", "is not an RFC 3339 time with an offset"),
    ("9999-12-31T23:00:00-05:00", "is after the year 9999 in UTC"),
])
def test_a_bad_expires_at_is_refused_in_one_line(db, value, says):
    before = keys(db)
    assert says in usage_error(run("keys", "create", "--org", "acme", "--expires-at", value, "--db", db),
                               "--expires-at")
    assert keys(db) == before


def test_expires_in_and_expires_at_are_mutually_exclusive(db):
    before = keys(db)
    result = run("keys", "create", "--org", "acme", "--expires-in", "1d", "--expires-at", "2030-01-01T00:00:00Z",
                 "--db", db)
    assert "mutually exclusive" in usage_error(result, "--expires-in")
    assert keys(db) == before


# -- a new organization is announced ----------------------------------------------------


def test_a_key_that_starts_an_organization_says_so_on_stderr(db):
    _, said = create_key(db, org="acmee")
    first, created = said.splitlines()
    assert first.startswith('Started a new organization "acmee": it had no key and no pod')
    assert "orgs list" in first and created.startswith("Created API key ")
    _, again = create_key(db, org="acmee")
    assert "Started" not in again  # it exists now
    _, default = create_key(db, org="default")
    assert "Started" not in default  # init made its key


def test_an_organization_whose_keys_are_all_revoked_is_not_new(db):
    create_key(db)
    for row in keys(db):
        if row[1] == "acme":
            assert run("keys", "revoke", row[0], "--db", db).exit_code == 0
    _, said = create_key(db)
    assert "Started" not in said


# -- orgs list --------------------------------------------------------------------------


def test_orgs_list_names_keys_pods_and_creation(db):
    token, _ = create_key(db, org="acme")
    create_key(db, org="acme")
    create_key(db, org="globex")
    app = create_app({"TESTING": True, "DB": db})
    try:
        client = app.test_client()
        for client_id in ("a", "b"):
            client.post("/agent/v0/pods", json={"client_id": client_id}, headers={"Authorization": f"Bearer {token}"})
    finally:
        close_app(app)
    globex_key = [row[0] for row in keys(db) if row[1] == "globex"][0]
    assert run("keys", "revoke", globex_key, "--db", db).exit_code == 0  # revoked: not counted

    result = run("orgs", "list", "--db", db)
    assert result.exit_code == 0 and result.stderr == ""
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[:3] for row in rows] == [["default", "1", "0"], ["acme", "2", "2"], ["globex", "0", "0"]]
    created = [row[3] for row in rows]
    assert created == sorted(created) and all(re.fullmatch(r"\S+T\S+\.\d{6}Z", c) for c in created)

    objects = [json.loads(line) for line in run("orgs", "list", "--json", "--db", db).stdout.splitlines()]
    assert objects == [{"name": r[0], "keys": int(r[1]), "pods": int(r[2]), "created_at": r[3]} for r in rows]


def test_orgs_list_shows_a_name_a_terminal_would_obey_escaped(db):
    storage = open_storage(db)  # the CLI refuses such a name; a database may hold one all the same
    try:
        token = new_token()
        storage.insert_api_key("a\x9b2Jb", hash_key(token), token_prefix(token))
    finally:
        storage.close()
    line = run("orgs", "list", "--db", db).stdout.splitlines()[-1]
    assert line.startswith("a\\xc2\\x9b2Jb\t") and "\x9b" not in line


def test_orgs_list_refuses_a_missing_database_in_one_line(tmp_path):
    result = run("orgs", "list", "--db", tmp_path / "prod.bd")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: database {tmp_path / 'prod.bd'} does not exist")
    assert os.listdir(tmp_path) == []


# -- a key is shown and stored, never one without the other -------------------------


def app_py(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, APP, *map(str, args)], text=True, timeout=60, **kwargs)


def authenticates(db, token) -> bool:
    app = create_app({"TESTING": True, "DB": db})
    try:
        return app.test_client().get("/agent/v0/pods", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        close_app(app)


def test_keys_create_piped_to_head_keeps_the_token_and_stores_the_key(db):
    """The token is stdout's first and only line; "Created" comes on stderr, once stored."""
    result = subprocess.run(["sh", "-c", f'"{sys.executable}" "{APP}" keys create --org acme --db "$1" | head -1',
                             "sh", db], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [token] = result.stdout.splitlines()
    assert token.startswith("pods_")
    [notice, said] = result.stderr.splitlines()
    assert notice.startswith('Started a new organization "acme"')
    assert re.fullmatch(r'Created API key [0-9a-f]{16} for organization "acme" \(every permission; no expiry\)\.'
                        r' Its token, on stdout, is shown only once\.', said)
    assert authenticates(db, token)
    assert said.split()[3] == keys(db)[-1][0]


def test_a_stdout_whose_reader_is_gone_stores_nothing_and_announces_nothing(db):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written: EPIPE
    try:
        result = app_py("keys", "create", "--org", "acme", "--db", db, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line == "Error: cannot write a new API key to stdout (Broken pipe); nothing was stored"
    assert [row[1] for row in keys(db)] == ["default"]


# -- a first start that cannot show its key leaves no database -----------------------


@pytest.mark.live
@pytest.mark.parametrize("stdout", ["closed", "/dev/full"])
def test_a_first_start_that_cannot_show_its_key_leaves_no_database_so_init_works(tmp_path, stdout):
    path = tmp_path / "pods.db"
    if stdout == "closed":
        result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, APP, "--port", "0", "--db",
                                 str(path)], stderr=subprocess.PIPE, text=True, timeout=60)
    else:
        with open(stdout, "w") as full:
            result = app_py("--port", "0", "--db", path, stdout=full, stderr=subprocess.PIPE)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and line.endswith("nothing was stored")
    assert os.listdir(tmp_path) == []
    initialised = app_py("init", "--db", path, capture_output=True)
    assert initialised.returncode == 0, initialised.stderr
    assert initialised.stdout.startswith("pods_")


# -- with --workers, every log line names its worker -------------------------------


@pytest.mark.live
def test_with_workers_every_log_line_ends_with_its_worker(tmp_path):
    server = Server(tmp_path / "pods.db", "--workers", "2", workdir=tmp_path)
    try:
        auth = {"Authorization": f"Bearer {server.bootstrap_token}"}
        with httpx.Client(base_url=server.url, headers=auth) as client:
            for i in range(20):
                assert client.get("/agent/v0/pods", headers={"X-Request-Id": f"w-{i}"}).status_code == 200
                httpx.get(server.url + "/healthz")  # new connections: the kernel spreads them over the workers
            client.get("/agent/v0/pods/nope%0Aforged%20worker=7")  # a client cannot name a worker either
    finally:
        assert server.stop() == 0
    lines = server.stderr.splitlines()
    assert lines and all(WORKER.search(line) for line in lines), [x for x in lines if not WORKER.search(x)]
    assert all(int(WORKER.search(line).group(1)) in (0, 1, 2) for line in lines)
    [first_key] = [line for line in lines if "created API key" in line]
    assert first_key.endswith(" worker=0")  # the parent made it, before the workers started
    access = [line for line in lines if " pods.access " in line]
    assert {WORKER.search(line).group(1) for line in access} <= {"1", "2"} and len(access) >= 41
    [forged] = [line for line in access if "forged" in line]
    assert "/nope\\x0aforged\\x20worker=7 404 " in forged  # escaped, then the worker that wrote it
    for worker in ("1", "2"):
        assert any(line.endswith(f" INFO pods.server stopped worker={worker}") for line in lines), worker


@pytest.mark.live
def test_with_one_process_lines_are_as_before(tmp_path):
    server = Server(tmp_path / "pods.db", workdir=tmp_path)
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        assert server.stop() == 0
    assert server.stderr and "worker=" not in server.stderr


# -- the PostgreSQL hint names this project --------------------------------------------


def test_the_postgresql_hint_names_this_pods_own_python_or_says_the_zip_serves_sqlite_only(monkeypatch):
    from pods import storage

    installed = storage.postgres_missing_message()
    assert f"{sys.executable} -m pip install 'psycopg[binary]>=3.2,<4' 'psycopg-pool>=3.2,<4'" in installed
    assert "pods[" not in installed and "pip install pods" not in installed
    monkeypatch.setattr(storage, "running_from_zip", lambda: True)
    zipped = storage.postgres_missing_message()
    assert zipped.startswith("pods.pyz serves SQLite only") and "pip install '.[postgres]'" in zipped
