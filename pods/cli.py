"""The operator's command line: ``python app.py [serve options] [COMMAND]``."""

import logging
import os
import sys

import click

from . import create_app, queries
from .auth import hash_key, new_token
from .db import connect, init_db

DEFAULT_ORG = "default"


def _org_name(ctx, param, value):
    if value is not None and not (1 <= len(value) <= 255 and value.isprintable()):
        raise click.BadParameter("must be 1 to 255 printable characters")
    return value


def db_option(default):
    return click.option(
        "--db",
        envvar="PODS_DB",
        default=default,
        show_default=default is not None,
        help="SQLite database file (env PODS_DB).",
    )


def _db_path(ctx: click.Context, db: str | None) -> str:
    """A command's own --db, else the one given before the command name."""
    return db or ctx.find_root().params["db"]


def _open(path: str):
    init_db(path)
    return connect(path)


@click.group(invoke_without_command=True)
@click.option("--host", envvar="PODS_HOST", default="127.0.0.1", show_default=True,
              help="Interface to listen on (env PODS_HOST).")
@click.option("--port", envvar="PODS_PORT", default=8080, show_default=True,
              type=click.IntRange(0, 65535), help="TCP port (env PODS_PORT).")
@db_option("pods.db")
@click.option("--threads", envvar="PODS_THREADS", default=4, show_default=True,
              type=click.IntRange(1, 1024), help="Worker threads (env PODS_THREADS).")
@click.pass_context
def cli(ctx, host, port, db, threads):
    """Serve the Pods API, or manage its API keys.

    With no COMMAND, serves on HOST:PORT. On the first start with no key in the
    database, creates a key for the organization "default" and prints it once.
    PODS_API_KEY=<token> in the environment makes that token a key of "default".
    """
    if ctx.invoked_subcommand is None:
        serve(host, port, db, threads)


def serve(host: str, port: int, db: str, threads: int) -> None:
    from .server import make_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app({"DB": db})
    conn = connect(db)
    try:
        _bootstrap_key(conn, os.environ.get("PODS_API_KEY"))
    finally:
        conn.close()
    server = make_server(app, host, port, threads)
    click.echo(f"pods serving on http://{server.effective_host}:{server.effective_port} (database {db})")
    sys.stdout.flush()
    server.run()


def _bootstrap_key(conn, env_token: str | None) -> None:
    """Make PODS_API_KEY a key of "default", or give a new database its first key."""
    if env_token:
        queries.insert_api_key(conn, DEFAULT_ORG, hash_key(env_token))
        if queries.org_for_key_hash(conn, hash_key(env_token)) is None:
            click.echo("warning: PODS_API_KEY is a revoked key; it will not authenticate", err=True)
    elif queries.count_api_keys(conn) == 0:
        token = new_token()
        key_id = queries.insert_api_key(conn, DEFAULT_ORG, hash_key(token))
        click.echo(f'Created API key {key_id} for organization "{DEFAULT_ORG}". It is shown only once:')
        click.echo(token)


@cli.group()
def keys():
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--org", required=True, callback=_org_name, help="Organization the key belongs to.")
@db_option(None)
@click.pass_context
def keys_create(ctx, org, db):
    """Create a key; its token is printed once, as the last line."""
    token = new_token()
    conn = _open(_db_path(ctx, db))
    try:
        key_id = queries.insert_api_key(conn, org, hash_key(token))
    finally:
        conn.close()
    click.echo(f'Created API key {key_id} for organization "{org}". It is shown only once:')
    click.echo(token)


@keys.command("list")
@db_option(None)
@click.pass_context
def keys_list(ctx, db):
    """One key per line: key id, organization, created, revoked (or -)."""
    conn = _open(_db_path(ctx, db))
    try:
        rows = queries.list_api_keys(conn)
    finally:
        conn.close()
    for row in rows:
        click.echo("\t".join([row["key_id"], row["org_name"], row["created_at"], row["revoked_at"] or "-"]))


@keys.command("revoke")
@click.argument("key_id")
@db_option(None)
@click.pass_context
def keys_revoke(ctx, key_id, db):
    """Revoke a key; it fails from the next request on."""
    conn = _open(_db_path(ctx, db))
    try:
        revoked_at = queries.revoke_api_key(conn, key_id)
    finally:
        conn.close()
    if revoked_at is None:
        raise click.ClickException(f"no key with id {key_id}")
    click.echo(f"Revoked API key {key_id} at {revoked_at}.")
