"""The operator's command line: ``python app.py [serve options] [COMMAND]``."""

import functools
import logging
import os
import sqlite3
import sys
from contextlib import contextmanager

import click

from . import __version__, accesslog, create_app, logstream, queries, server
from .auth import hash_key, new_token
from .db import (
    SchemaTooNew,
    backup,
    checkpoint,
    close_thread_connection,
    connect,
    init_db,
    integrity_problems,
)

DEFAULT_ORG = "default"
THREADS_DEFAULT = 1
LOG_LEVELS = ["debug", "info", "warning", "error"]


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


def _trusted_proxies(ctx, param, value):
    try:
        return accesslog.parse_trusted_proxies(value or "")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _db_path(ctx: click.Context, db: str | None) -> str:
    """A command's own --db, else the one given before the command name."""
    return db or ctx.find_root().params["db"]


@contextmanager
def _database(path: str):
    """A connection to the database at ``path`` (brought to the current schema),
    with expected failures reported in one line."""
    with _clear_failures(path):
        init_db(path)
        conn = connect(path)
        try:
            yield conn
        finally:
            conn.close()


@click.group(invoke_without_command=True)
@click.version_option(__version__, prog_name="pods")
@click.option("--host", envvar="PODS_HOST", default="127.0.0.1", show_default=True,
              help="Interface to listen on (env PODS_HOST).")
@click.option("--port", envvar="PODS_PORT", default=8080, show_default=True,
              type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one (env PODS_PORT).")
@db_option("pods.db")
@click.option("--threads", envvar="PODS_THREADS", default=THREADS_DEFAULT, show_default=True,
              type=click.IntRange(1, 1024), help="Worker threads per process (env PODS_THREADS).")
@click.option("--workers", envvar="PODS_WORKERS", default=1, show_default=True,
              type=click.IntRange(1, 64), help="Server processes sharing the port (env PODS_WORKERS).")
@click.option("--log-level", envvar="PODS_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="info logs one line per request (env PODS_LOG_LEVEL).")
@click.option("--trusted-proxy", envvar="PODS_TRUSTED_PROXY", default="", callback=_trusted_proxies,
              help="Address(es) or network(s), comma-separated, of a reverse proxy whose X-Forwarded-For "
                   "gives the client address for the log; nobody else's is used (env PODS_TRUSTED_PROXY).")
@click.option("--header-timeout", envvar="PODS_HEADER_TIMEOUT", default=server.HEADER_TIMEOUT,
              show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a request's head may take to arrive, from its first byte (from the "
                   "connection's opening, for the first request) (env PODS_HEADER_TIMEOUT).")
@click.option("--keepalive-timeout", envvar="PODS_KEEPALIVE_TIMEOUT", default=server.KEEPALIVE_TIMEOUT,
              show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds an idle kept-alive connection stays open (env PODS_KEEPALIVE_TIMEOUT).")
@click.option("--connection-limit", envvar="PODS_CONNECTION_LIMIT", default=server.CONNECTION_LIMIT,
              show_default=True, type=click.IntRange(1, 1_000_000),
              help="Open connections per process; at the limit the one idle longest is closed to admit "
                   "a new one (env PODS_CONNECTION_LIMIT).")
@click.pass_context
def cli(ctx, host, port, db, threads, workers, log_level, **limits):
    """Serve the Pods API, or manage its API keys and database.

    With no COMMAND, serves on HOST:PORT until SIGTERM or SIGINT. On the first
    start with no key in the database, creates a key for the organization
    "default" and prints it once. PODS_API_KEY=<token> in the environment makes
    that token a key of "default".
    """
    if ctx.invoked_subcommand is None:
        try:
            serve(host, port, db, threads, workers, log_level, limits)
        finally:
            logstream.stderr.flush(timeout=2)  # a stalled log reader delays the exit by this at most


def configure_logging(level: str) -> None:
    """Every log line to stderr, through the log stream (never blocking)."""
    root = logging.getLogger()
    root.handlers[:] = [logstream.LogStreamHandler(logstream.stderr)]
    root.setLevel(level.upper())


def serve(host: str, port: int, db: str, threads: int, workers: int, log_level: str, limits: dict) -> None:
    configure_logging(log_level)
    limits["trusted_proxies"] = limits.pop("trusted_proxy")
    limits["connection_limit"] = _fit_connection_limit(limits["connection_limit"])
    _prepare_database(db, os.environ.get("PODS_API_KEY"))
    config = {"DB": db, "TRUSTED_PROXIES": limits["trusted_proxies"]}
    with _clear_failures(db):
        # One process builds its app now, so a failure shows before "serving on";
        # worker processes build their own after the fork (SQLite connections
        # must not cross one).
        app = create_app(config) if workers == 1 else None
    sockets, port_lock = _listen(host, port, workers)

    url_host = f"[{host}]" if ":" in host else host
    click.echo(f"pods serving on http://{url_host}:{sockets[0].getsockname()[1]} (database {db}, {workers} worker(s))")
    sys.stdout.flush()
    if app is not None:
        _serve_app(app, sockets[0], threads, limits)
        return
    code = server.run_workers([functools.partial(_serve_worker, config, sock, threads, limits) for sock in sockets])
    for sock in sockets + [port_lock]:
        sock.close()
    if code:
        sys.exit(code)


def _listen(host: str, port: int, workers: int):
    """The listening sockets (one per worker, sharing the port) and the port's lock
    (``server.hold_port``): one server per port, whatever --workers says."""
    port_lock = None
    try:
        if port:
            port_lock = server.hold_port(port)
        sockets = [server.listening_socket(host, port, reuse_port=workers > 1)]
        port = sockets[0].getsockname()[1]  # the real one, when 0 asked for any
        if port_lock is None:
            port_lock = server.hold_port(port)
        sockets += [server.listening_socket(host, port, reuse_port=True) for _ in range(workers - 1)]
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sockets, port_lock


def _fit_connection_limit(wanted: int) -> int:
    fits = server.raise_open_file_limit(wanted)
    if fits < wanted:
        logging.getLogger("pods.server").warning(
            "connection limit lowered from %d to %d: the open-file limit (ulimit -n) allows no more", wanted, fits
        )
    return fits


def _prepare_database(db: str, env_token: str | None) -> None:
    with _database(db) as conn:
        _bootstrap_key(conn, env_token)


def _serve_worker(config: dict, sock, threads: int, limits: dict) -> None:
    try:
        with _clear_failures(config["DB"]):
            app = create_app(config)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    _serve_app(app, sock, threads, limits)


def _serve_app(app, sock, threads: int, limits: dict) -> None:
    db = app.config["DB"]
    waitress_server = server.make_server(app, sock, threads, **limits)
    server.run_until_signalled(waitress_server, on_exit=lambda: _close_database(db))


def _close_database(path: str) -> None:
    close_thread_connection(path)
    checkpoint(path)


@contextmanager
def _clear_failures(db: str):
    """Expected failures (unreadable or foreign database file, locked, disk full,
    too new a schema) become one line on stderr and exit status 1, not a traceback."""
    try:
        yield
    except SchemaTooNew as e:
        raise click.ClickException(str(e)) from None
    except sqlite3.Error as e:
        raise click.ClickException(f"database {db}: {e}") from None


def _bootstrap_key(conn, env_token: str | None) -> None:
    """Make PODS_API_KEY a key of "default", or give a new database its first key."""
    if env_token:
        key_hash = hash_key(env_token)
        queries.insert_api_key(conn, DEFAULT_ORG, key_hash)
        if queries.org_for_key_hash(conn, key_hash) is None:
            click.echo("warning: PODS_API_KEY is a revoked key; it will not authenticate", err=True)
    elif queries.count_api_keys(conn) == 0:
        _create_key(conn, DEFAULT_ORG)


def _create_key(conn, org: str) -> None:
    """Store a new key for ``org`` and print it: once, as the last line."""
    token = new_token()
    key_id = queries.insert_api_key(conn, org, hash_key(token))
    click.echo(f'Created API key {key_id} for organization "{org}". It is shown only once:')
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
    with _database(_db_path(ctx, db)) as conn:
        _create_key(conn, org)


@keys.command("list")
@db_option(None)
@click.pass_context
def keys_list(ctx, db):
    """One key per line: key id, organization, created, revoked (or -)."""
    with _database(_db_path(ctx, db)) as conn:
        rows = queries.list_api_keys(conn)
    for row in rows:
        click.echo("\t".join([row["key_id"], row["org_name"], row["created_at"], row["revoked_at"] or "-"]))


@keys.command("revoke")
@click.argument("key_id")
@db_option(None)
@click.pass_context
def keys_revoke(ctx, key_id, db):
    """Revoke a key; it fails from the next request on."""
    with _database(_db_path(ctx, db)) as conn:
        revoked_at = queries.revoke_api_key(conn, key_id)
    if revoked_at is None:
        raise click.ClickException(f"no key with id {key_id}")
    click.echo(f"Revoked API key {key_id} at {revoked_at}.")


@cli.command("backup")
@click.argument("path", type=click.Path(dir_okay=False))
@db_option(None)
@click.pass_context
def backup_command(ctx, path, db):
    """Write a consistent copy of the database to PATH, safely while serving."""
    source = _db_path(ctx, db)
    with _clear_failures(source):
        backup(source, path)
    with _database(path) as conn:
        pods = queries.count_pods(conn)
    click.echo(f"Backed up {source} to {path}: {pods} pods, integrity ok.")


@cli.command("check")
@db_option(None)
@click.pass_context
def check_command(ctx, db):
    """Check the database's integrity; exits 1 on damage."""
    path = _db_path(ctx, db)
    with _clear_failures(path):
        problems = integrity_problems(path)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        raise click.ClickException(f"database {path} is damaged ({len(problems)} problem(s))")
    click.echo(f"{path}: ok")
