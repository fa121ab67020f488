"""The operator's commands, exactly as the contract words them."""

import pytest
from click.testing import CliRunner

from pods import create_app, db
from pods.cli import _bootstrap_key, cli


@pytest.fixture
def dbpath(tmp_path):
    return str(tmp_path / "cli.db")


def run(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result


def authenticates(path, token):
    app = create_app({"TESTING": True, "DB": path})
    try:
        r = app.test_client().get("/agent/v0/pods", headers={"Authorization": f"Bearer {token}"})
        return r.status_code == 200
    finally:
        db.close_thread_connection(path)


def test_keys_create_prints_the_token_last(dbpath):
    result = run("keys", "create", "--org", "acme", "--db", dbpath)
    assert result.exit_code == 0
    token = result.output.splitlines()[-1]
    assert token.startswith("pods_") and len(token) > 40
    assert authenticates(dbpath, token)


def test_db_option_before_the_command_and_from_the_environment(tmp_path):
    first, second = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    assert run("--db", first, "keys", "create", "--org", "x").exit_code == 0
    assert run("keys", "create", "--org", "y", env={"PODS_DB": second}).exit_code == 0
    assert run("--db", first, "keys", "list").output.split("\t")[1] == "x"
    assert run("keys", "list", env={"PODS_DB": second}).output.split("\t")[1] == "y"


def test_keys_list_shows_id_org_created_revoked_and_never_the_token(dbpath):
    tokens = [run("keys", "create", "--org", org, "--db", dbpath).output.splitlines()[-1] for org in ("a", "b")]
    out = run("keys", "list", "--db", dbpath).output
    lines = out.splitlines()
    assert len(lines) == 2
    rows = [line.split("\t") for line in lines]
    assert [r[1] for r in rows] == ["a", "b"]
    assert all(len(r) == 4 and r[3] == "-" for r in rows)
    assert all(t not in out for t in tokens)


def test_keys_revoke_takes_effect_and_is_listed(dbpath):
    token = run("keys", "create", "--org", "acme", "--db", dbpath).output.splitlines()[-1]
    key_id = run("keys", "list", "--db", dbpath).output.split("\t")[0]
    result = run("keys", "revoke", key_id, "--db", dbpath)
    assert result.exit_code == 0
    assert key_id in result.output
    assert not authenticates(dbpath, token)
    assert run("keys", "list", "--db", dbpath).output.rstrip().split("\t")[3] != "-"


def test_revoking_an_unknown_key_fails_clearly(dbpath):
    result = CliRunner().invoke(cli, ["keys", "revoke", "nope", "--db", dbpath])
    assert result.exit_code != 0
    assert "no key with id nope" in result.output


@pytest.mark.parametrize("org", ["", "x" * 256, "bad\norg"])
def test_keys_create_rejects_a_bad_org_name(dbpath, org):
    result = CliRunner().invoke(cli, ["keys", "create", "--org", org, "--db", dbpath])
    assert result.exit_code == 2
    assert "--org" in result.output


def test_first_start_creates_and_prints_one_key(dbpath, capsys):
    db.init_db(dbpath)
    conn = db.connect(dbpath)
    try:
        _bootstrap_key(conn, None)
        token = capsys.readouterr().out.splitlines()[-1]
        _bootstrap_key(conn, None)  # a second start prints nothing new
        assert capsys.readouterr().out == ""
        assert conn.execute("SELECT count(*) FROM api_key").fetchone()[0] == 1
    finally:
        conn.close()
    assert authenticates(dbpath, token)


def test_pods_api_key_is_stored_once_across_restarts(dbpath, capsys):
    db.init_db(dbpath)
    conn = db.connect(dbpath)
    try:
        for _ in range(3):
            _bootstrap_key(conn, "my-own-token")
        assert capsys.readouterr().out == ""  # nothing to print: the operator chose it
        rows = conn.execute("SELECT o.name FROM api_key k JOIN organization o USING (org_id)").fetchall()
        assert [tuple(r) for r in rows] == [("default",)]
    finally:
        conn.close()
    assert authenticates(dbpath, "my-own-token")


def test_help_documents_flags_and_commands():
    out = run("--help").output
    for word in ("--host", "--port", "--db", "--threads", "PODS_HOST", "PODS_PORT", "PODS_DB",
                 "PODS_THREADS", "PODS_API_KEY", "keys"):
        assert word in out
    keys_help = run("keys", "--help").output
    assert all(c in keys_help for c in ("create", "list", "revoke"))
