"""The operator's commands, exactly as the contract words them."""

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from live import APP, run_app

from conftest import storage_of

from pods import create_app
from pods.storage import sqlite as db
from pods.api.auth import hash_key, token_prefix
from pods.cli import cli, documented_variables
from pods.serving.serve import bootstrap_key as _bootstrap_key

FIXTURE_V1 = Path(__file__).parent.parent / "fixtures" / "v1.db"


@pytest.fixture
def newpath(tmp_path):
    """Where a database may be made; nothing is there yet."""
    return str(tmp_path / "cli.db")


@pytest.fixture
def dbpath(newpath):
    """A database made by ``init`` (it holds one key, of "default")."""
    assert run("init", "--db", newpath).exit_code == 0
    return newpath


@pytest.fixture
def v1_copy(tmp_path):
    path = str(tmp_path / "old.db")
    shutil.copy(FIXTURE_V1, path)
    return path


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def one_line_error(result) -> str:
    """The one ``Error: ...`` line a failed command printed on stderr (exit 1)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def sql_of():
    """sql_of(path, statement) -> rows, read from the database file directly."""

    def read(path, statement):
        conn = sqlite3.connect(path)
        try:
            return conn.execute(statement).fetchall()
        finally:
            conn.close()

    return read


def key_rows(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT key_id, revoked_at FROM api_key ORDER BY created_at").fetchall()
    finally:
        conn.close()


def authenticates(path, token):
    app = create_app({"TESTING": True, "DB": path})
    try:
        r = app.test_client().get("/agent/v0/pods", headers={"Authorization": f"Bearer {token}"})
        return r.status_code == 200
    finally:
        storage_of(app).close()


# -- keys ----------------------------------------------------------------------


def test_keys_create_prints_the_token_last(dbpath):
    result = run("keys", "create", "--org", "acme", "--db", dbpath)
    assert result.exit_code == 0
    token = result.stdout.splitlines()[-1]
    assert token.startswith("pods_") and len(token) > 40
    assert authenticates(dbpath, token)


def test_keys_list_shows_id_org_created_revoked_name_scope_and_never_the_token(dbpath):
    tokens = [run("keys", "create", "--org", org, "--db", dbpath).stdout.splitlines()[-1] for org in ("a", "b")]
    out = run("keys", "list", "--db", dbpath).output
    lines = out.splitlines()
    assert len(lines) == 3
    rows = [line.split("\t") for line in lines]
    assert [r[1] for r in rows] == ["default", "a", "b"]
    assert all(len(r) == 8 and r[3] == "-" and r[5] == "org" and r[6:] == ["-", "all"] for r in rows)
    assert [r[4] for r in rows[1:]] == [t[:12] for t in tokens]  # named after the token's prefix
    assert all(t not in out for t in tokens)


def test_keys_revoke_takes_effect_and_is_listed(dbpath):
    token = run("keys", "create", "--org", "acme", "--db", dbpath).stdout.splitlines()[-1]
    key_id = run("keys", "list", "--db", dbpath).output.splitlines()[-1].split("\t")[0]
    result = run("keys", "revoke", key_id, "--db", dbpath)
    assert result.exit_code == 0
    assert key_id in result.output
    assert not authenticates(dbpath, token)
    assert run("keys", "list", "--db", dbpath).output.splitlines()[-1].split("\t")[3] != "-"


@contextmanager
def api(path):
    """The API over the database at ``path``, in-process."""
    app = create_app({"TESTING": True, "DB": path})
    try:
        yield app.test_client()
    finally:
        storage_of(app).close()


def bearer(token) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def acme_pod(dbpath):
    """(token of an acme organization key, the id of a pod of acme)."""
    token = run("keys", "create", "--org", "acme", "--db", dbpath).stdout.splitlines()[-1]
    with api(dbpath) as c:
        return token, c.post("/agent/v0/pods", json={"name": "p"}, headers=bearer(token)).json["pod_id"]


def test_keys_create_with_pod_and_name_makes_a_scoped_key(dbpath, acme_pod):
    org_token, pod_id = acme_pod
    result = run("keys", "create", "--org", "acme", "--pod", pod_id, "--name", "edge agent", "--db", dbpath)
    assert result.exit_code == 0, result.output
    token = result.stdout.splitlines()[-1]
    [said] = result.stderr.splitlines()  # once the key is stored: no new-organization notice for a pod's key
    key_id = said.split()[3]
    assert said == (f'Created API key {key_id} for pod {pod_id} of organization "acme" (every permission; no expiry).'
                    f' Its token, on stdout, is shown only once.')
    row = run("keys", "list", "--db", dbpath).output.splitlines()[-1].split("\t")
    assert (row[0], row[1], row[3], row[4], row[5]) == (key_id, "acme", "-", "edge agent", pod_id)
    with api(dbpath) as c:
        assert [p["pod_id"] for p in c.get("/agent/v0/pods", headers=bearer(token)).json["pods"]] == [pod_id]
        assert c.post("/agent/v0/pods", json={}, headers=bearer(token)).status_code == 403
        got = c.get(f"/agent/v0/api-keys/{key_id}", headers=bearer(org_token)).json
        assert (got["name"], got["pod_id"], got["prefix"], "permissions" in got) == (
            "edge agent", pod_id, token[:12], False)


@pytest.mark.parametrize("org", ["globex", "acme"])
def test_keys_create_for_a_pod_outside_the_org_fails_in_one_line(dbpath, acme_pod, sql_of, org):
    _, pod_id = acme_pod
    assert run("keys", "create", "--org", "globex", "--db", dbpath).exit_code == 0  # globex exists too
    before = sql_of(dbpath, "SELECT * FROM api_key"), sql_of(dbpath, "SELECT * FROM organization")
    pod = pod_id if org == "globex" else "no-such-pod"
    result = CliRunner().invoke(cli, ["keys", "create", "--org", org, "--pod", pod, "--db", dbpath])
    assert one_line_error(result) == f'Error: organization "{org}" has no pod {pod}'
    assert result.stdout == ""  # no token was shown
    assert (sql_of(dbpath, "SELECT * FROM api_key"), sql_of(dbpath, "SELECT * FROM organization")) == before


@pytest.mark.parametrize("name", ["", "x" * 256, "tab\there", "line\nbreak"])
def test_keys_create_rejects_a_bad_name(dbpath, name):
    before = key_rows(dbpath)
    result = CliRunner().invoke(cli, ["keys", "create", "--org", "acme", "--name", name, "--db", dbpath])
    assert result.exit_code == 2 and "--name" in result.output
    assert key_rows(dbpath) == before


def test_keys_create_for_a_pod_makes_no_organization_when_it_fails(dbpath, acme_pod, sql_of):
    _, pod_id = acme_pod
    one_line_error(CliRunner().invoke(cli, ["keys", "create", "--org", "newcomer", "--pod", pod_id, "--db", dbpath]))
    assert sql_of(dbpath, "SELECT name FROM organization WHERE name = 'newcomer'") == []


def test_keys_list_shows_keys_made_over_the_api_with_name_and_scope(dbpath, acme_pod):
    org_token, pod_id = acme_pod
    with api(dbpath) as c:
        made = c.post("/agent/v0/api-keys", json={"name": "ci"}, headers=bearer(org_token)).json
        scoped = c.post(f"/agent/v0/pods/{pod_id}/api-keys", json={}, headers=bearer(org_token)).json
        sneaky = c.post("/agent/v0/api-keys", json={"name": "a\x9b2Jb\u2028c"}, headers=bearer(org_token)).json
        deleted = c.post("/agent/v0/api-keys", json={"name": "gone"}, headers=bearer(org_token)).json
        assert c.delete(f"/agent/v0/api-keys/{deleted['api_key_id']}", headers=bearer(org_token)).status_code == 200
    out = run("keys", "list", "--db", dbpath).output
    rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert all(len(row) == 8 for row in rows.values())
    assert rows[made["api_key_id"]][4:] == ["ci", "org", "-", "all"]
    assert rows[scoped["api_key_id"]][4:6] == [scoped["api_key"][:12], pod_id]  # named after its prefix
    # A name a terminal would obey (C1 CSI, a line separator) is shown escaped, on its one line.
    assert rows[sneaky["api_key_id"]][4] == "a\\xc2\\x9b2Jb\\xe2\\x80\\xa8c"
    assert "\x9b" not in out and "\u2028" not in out
    assert rows[deleted["api_key_id"]][3] != "-" and rows[deleted["api_key_id"]][4] == "gone"  # revoked
    assert all(k["api_key"] not in out for k in (made, scoped, sneaky, deleted))


def test_a_key_revoked_from_the_cli_is_gone_from_the_api(dbpath, acme_pod):
    org_token, pod_id = acme_pod
    with api(dbpath) as c:
        scoped = c.post(f"/agent/v0/pods/{pod_id}/api-keys", json={}, headers=bearer(org_token)).json
    assert run("keys", "revoke", scoped["api_key_id"], "--db", dbpath).exit_code == 0
    with api(dbpath) as c:
        assert c.get("/agent/v0/pods", headers=bearer(scoped["api_key"])).status_code == 401
        assert c.get(f"/agent/v0/api-keys/{scoped['api_key_id']}", headers=bearer(org_token)).status_code == 404
        listed = c.get(f"/agent/v0/pods/{pod_id}/api-keys", headers=bearer(org_token)).json
        assert listed["api_keys"] == []


def test_revoking_an_unknown_key_fails_clearly(dbpath):
    assert one_line_error(run("keys", "revoke", "nope", "--db", dbpath)) == "Error: no key with id nope"


@pytest.mark.parametrize("org", ["", "x" * 256, "bad\norg"])
def test_keys_create_rejects_a_bad_org_name(dbpath, org):
    result = CliRunner().invoke(cli, ["keys", "create", "--org", org, "--db", dbpath])
    assert result.exit_code == 2
    assert "--org" in result.output


def test_first_start_creates_and_prints_one_key(newpath, capsys):
    db.init_db(newpath)
    storage = db.SQLiteStorage(newpath)
    try:
        _bootstrap_key(storage, None)
        token = capsys.readouterr().out.splitlines()[-1]
        _bootstrap_key(storage, None)  # a second start prints nothing new
        assert capsys.readouterr().out == ""
        assert storage.count_api_keys() == 1
    finally:
        storage.close()
    assert authenticates(newpath, token)


def test_pods_api_key_that_is_another_organizations_key_is_left_as_it_is_with_a_warning(newpath, capsys):
    token = "pods_" + "already-acme-s-key-0123456789abcdef"
    db.init_db(newpath)
    storage = db.SQLiteStorage(newpath)
    try:
        storage.insert_api_key("acme", hash_key(token), token_prefix(token))
        _bootstrap_key(storage, token)
        assert capsys.readouterr().err == (
            'warning: PODS_API_KEY is already a key of organization "acme", not of "default"; it stays as it is\n')
        assert storage.count_api_keys() == 1
    finally:
        storage.close()


@pytest.mark.parametrize("target", [
    " postgresql://u:S3CRET@127.0.0.1/x", "postgresql+psycopg://u:S3CRET@127.0.0.1/x",
    "jdbc:postgresql://127.0.0.1/x?user=u&password=S3CRET", "postgresql:u:S3CRET@h/x",
    "host=127.0.0.1 user=postgres password=S3CRET dbname=pods", "sslkeylogfile=/k host=h",
    "oauth_client_secret=S3CRET", "x password=S3CRET host=h",
])
def test_a_database_server_spelled_otherwise_than_a_url_is_refused_not_taken_for_a_file(tmp_path, target):
    for args in (["--port", "0", "--db", target], ["check", "--db", target], ["copy", target, "x.db"]):
        result = run_app(*args, cwd=tmp_path)
        assert result.returncode == 2 and "names a database server, not as pods reads one" in result.stderr, args
        assert "S3CRET" not in result.stdout + result.stderr
    result = run_app("--port", "0", cwd=tmp_path, env={"PODS_DB": target})
    assert result.returncode == 2 and "S3CRET" not in result.stdout + result.stderr
    assert os.listdir(tmp_path) == []


def test_a_directory_is_refused_as_a_database_in_one_line(tmp_path):
    for args in (["--port", "0", "--db", str(tmp_path)], ["keys", "list", "--db", str(tmp_path)],
                 ["check", "--db", str(tmp_path)], ["copy", str(tmp_path), str(tmp_path / "x.db")]):
        result = run_app(*args)
        assert result.returncode == 2, result.stderr
        assert f"{tmp_path} is a directory; name a database file in it, e.g. {tmp_path}/pods.db" in result.stderr
    assert os.listdir(tmp_path) == []


def test_a_file_name_with_one_name_value_pair_is_still_a_file(tmp_path):
    result = run_app("init", "--db", "user=alice.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert run_app("check", "--db", "user=alice.db", cwd=tmp_path).stdout.strip().endswith(": ok")


def test_pods_api_key_is_stored_once_across_restarts(newpath, capsys):
    token = "my-own-token-of-at-least-32-characters"
    db.init_db(newpath)
    storage = db.SQLiteStorage(newpath)
    conn = storage.connection()
    try:
        for _ in range(3):
            _bootstrap_key(storage, token)
        assert capsys.readouterr().out == ""  # nothing to print: the operator chose it
        rows = conn.execute("SELECT o.name FROM api_key k JOIN organization o USING (org_id)").fetchall()
        assert [tuple(r) for r in rows] == [("default",)]
    finally:
        storage.close()
    assert authenticates(newpath, token)


# -- init, and only init (or serving) creates a database -------------------------


def test_init_creates_an_owner_only_database_and_prints_its_first_key(newpath):
    result = run("init", "--db", newpath)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1].endswith(
        'for organization "default" (every permission; no expiry). Its token, on stdout, is shown only once.')
    token = result.stdout.splitlines()[-1]
    assert token.startswith("pods_") and authenticates(newpath, token)
    assert os.stat(newpath).st_mode & 0o777 == 0o600
    conn = sqlite3.connect(newpath)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    finally:
        conn.close()
    assert [line.split("\t")[1] for line in run("keys", "list", "--db", newpath).output.splitlines()] == ["default"]


def test_init_stores_pods_api_key_when_set_and_makes_no_other(newpath):
    token = "pods_" + "operator-chosen-token-0123456789"
    result = run("init", "--db", newpath, env={"PODS_API_KEY": token})
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r'Stored PODS_API_KEY as API key \w+ for organization "default"\.\n', result.output)
    assert token not in result.output and authenticates(newpath, token)
    assert len(run("keys", "list", "--db", newpath).output.splitlines()) == 1
    short = run("init", "--db", newpath + "2", env={"PODS_API_KEY": "x"})
    assert "PODS_API_KEY is 1 character(s) long" in one_line_error(short)
    assert not os.path.exists(newpath + "2")


@pytest.mark.parametrize("content", [None, b""], ids=["a-database", "an-empty-file"])
def test_init_refuses_a_file_that_exists(dbpath, content):
    if content is not None:
        Path(dbpath).write_bytes(content)
    before = digest(dbpath)
    line = one_line_error(run("init", "--db", dbpath))
    assert line == f"Error: database {dbpath} already exists; init only creates a new one"
    assert digest(dbpath) == before


@pytest.mark.parametrize("command", [
    ["keys", "list"], ["keys", "create", "--org", "acme"], ["keys", "revoke", "0123456789abcdef"],
    ["backup", "copy.db"], ["check"], ["migrate"],
])
def test_every_other_command_refuses_a_missing_database(tmp_path, command):
    mistyped = str(tmp_path / "prod.bd")
    result = CliRunner().invoke(cli, [*command, "--db", mistyped])
    line = one_line_error(result)
    assert f"database {mistyped} does not exist" in line and "init" in line
    assert sorted(os.listdir(tmp_path)) == []  # neither the database nor a backup
    assert "Created API key" not in result.stdout


def test_a_mistyped_db_variable_creates_nothing_either(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(run("keys", "create", "--org", "acme", env={"PODS_DB": "prod.bd"}))
    assert "database prod.bd does not exist" in line
    assert os.listdir(tmp_path) == []


# -- --db: an explicit flag beats its variable, wherever it stands ----------------


@pytest.fixture
def staging_and_prod(tmp_path):
    paths = {name: str(tmp_path / f"{name}.db") for name in ("staging", "prod")}
    for path in paths.values():
        assert run("init", "--db", path).exit_code == 0
    return paths


@pytest.mark.parametrize("flag_first", [True, False], ids=["flag-before-the-command", "flag-after-it"])
def test_an_explicit_db_flag_beats_pods_db(staging_and_prod, flag_first):
    staging, prod = staging_and_prod["staging"], staging_and_prod["prod"]
    prod_key = key_rows(prod)[0][0]
    args = ["--db", prod, "keys", "revoke", prod_key] if flag_first else ["keys", "revoke", prod_key, "--db", prod]
    result = run(*args, env={"PODS_DB": staging})
    assert result.exit_code == 0, result.output
    assert key_rows(prod)[0][1] is not None  # revoked where the flag said
    assert all(revoked is None for _, revoked in key_rows(staging))


def test_pods_db_beats_the_default(staging_and_prod, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default pods.db would be
    listed = run("keys", "list", env={"PODS_DB": staging_and_prod["staging"]}).output
    assert listed.split("\t")[0] == key_rows(staging_and_prod["staging"])[0][0]
    assert not os.path.exists("pods.db")


def test_two_different_explicit_db_flags_are_a_usage_error(staging_and_prod):
    staging, prod = staging_and_prod["staging"], staging_and_prod["prod"]
    result = CliRunner().invoke(cli, ["--db", staging, "keys", "revoke", key_rows(prod)[0][0], "--db", prod])
    assert result.exit_code == 2
    assert f"--db given twice: {staging} before the command name and {prod} after it" in result.stderr
    assert all(revoked is None for path in (staging, prod) for _, revoked in key_rows(path))
    assert run("--db", prod, "keys", "list", "--db", prod).exit_code == 0  # the same value twice is fine


# -- older schemas: only serving and migrate change them --------------------------


@pytest.mark.parametrize("command", [["keys", "create", "--org", "acme"], ["keys", "revoke", "0123456789abcdef"],
                                     ["keys", "list"]])
def test_commands_on_an_older_schema_refuse_and_say_what_to_run(v1_copy, command):
    before = digest(v1_copy)
    line = one_line_error(CliRunner().invoke(cli, [*command, "--db", v1_copy]))
    assert f"database {v1_copy} has schema version 1, older than this pods' {db.SCHEMA_VERSION}" in line
    assert f"migrate --db {v1_copy}` (or start the server) first" in line
    assert digest(v1_copy) == before
    assert sorted(os.listdir(Path(v1_copy).parent)) == ["old.db"]


def test_migrate_upgrades_an_older_database_logging_each_step(v1_copy):
    before = key_rows(v1_copy)
    result = run_app("migrate", "--db", v1_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Migrated {v1_copy} from schema version 1 to {db.SCHEMA_VERSION}.\n"
    steps = [line.split(" INFO pods.db ")[1] for line in result.stderr.splitlines()]
    assert steps == [f"migrating schema {v} → {v + 1}" for v in range(1, db.SCHEMA_VERSION)]
    assert key_rows(v1_copy) == before
    assert run("keys", "list", "--db", v1_copy).exit_code == 0
    again = run_app("migrate", "--db", v1_copy)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout == f"{v1_copy}: schema version {db.SCHEMA_VERSION} is current; nothing to do.\n"


# -- a key is never stored unseen ------------------------------------------------


def run_with_stdout(stdout, *args):
    """``python app.py ARGS`` with stdout closed (``>&-``, when ``stdout`` is None)
    or sent to ``stdout``."""
    if stdout is None:
        command = ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, APP, *args]
        return subprocess.run(command, stderr=subprocess.PIPE, text=True, timeout=60)
    with open(stdout, "w") as out:
        return subprocess.run([sys.executable, APP, *args], stdout=out, stderr=subprocess.PIPE, text=True, timeout=60)


def assert_one_line_on_stderr(result, *words):
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize("stdout", [None, "/dev/full"], ids=["closed", "unwritable"])
def test_keys_create_stores_nothing_it_cannot_show(dbpath, stdout):
    before = key_rows(dbpath)
    result = run_with_stdout(stdout, "keys", "create", "--org", "acme", "--db", dbpath)
    assert_one_line_on_stderr(result, "nothing was stored")
    assert key_rows(dbpath) == before


@pytest.mark.parametrize("stdout", [None, "/dev/full"], ids=["closed", "unwritable"])
def test_init_leaves_nothing_when_it_cannot_show_the_key(tmp_path, stdout):
    result = run_with_stdout(stdout, "init", "--db", str(tmp_path / "new.db"))
    assert_one_line_on_stderr(result, "nothing was stored")
    assert os.listdir(tmp_path) == []  # so init can simply be run again


# -- configuration comes from the flags and the documented variables only ----------


def test_the_app_reads_no_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("PODS_API_KEY", "an-operator-token-of-at-least-32-chars")
    monkeypatch.setenv("PODS_MAX_CONTENT_LENGTH", "10")
    monkeypatch.setenv("PODS_DB", str(tmp_path / "elsewhere.db"))
    path = str(tmp_path / "app.db")
    app = create_app({"TESTING": True, "DB": path})
    try:
        assert app.config["DB"] == path and app.config["MAX_CONTENT_LENGTH"] == 64 * 1024
        assert "an-operator-token-of-at-least-32-chars" not in repr(dict(app.config))
        assert not os.path.exists(tmp_path / "elsewhere.db")
    finally:
        storage_of(app).close()


def test_documented_variables_come_from_the_options(dbpath):
    assert documented_variables() >= {"PODS_HOST", "PODS_PORT", "PODS_DB", "PODS_THREADS", "PODS_WORKERS",
                                      "PODS_LOG_LEVEL", "PODS_API_KEY"}
    env = {name: None for name in os.environ if name.startswith("PODS_")}
    quiet = run("keys", "list", "--db", dbpath, env={**env, "PODS_LOG_LEVEL": "info", "PODS_THREADS": "2"})
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_an_unknown_pods_variable_gets_one_warning_naming_it(dbpath):
    env = {name: None for name in os.environ if name.startswith("PODS_")}
    result = run("keys", "list", "--db", dbpath, env={**env, "PODS_DATABASE": "x.db", "PODS_TRHEADS": "4"})
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("warning: ignoring unknown environment variable(s) PODS_DATABASE, PODS_TRHEADS")


def test_help_documents_flags_and_commands():
    out = run("--help").output
    for word in ("--host", "--port", "--db", "--threads", "PODS_HOST", "PODS_PORT", "PODS_DB",
                 "PODS_THREADS", "PODS_API_KEY", "keys", "init", "migrate", "backup", "check"):
        assert word in out
    keys_help = run("keys", "--help").output
    assert all(c in keys_help for c in ("create", "list", "revoke"))
