"""The operator's command line: ``python app.py [serve options] [COMMAND]``."""

import contextlib
import logging
import os

import click
from click.core import ParameterSource

from .api import logstream
from .api.auth import hash_key, token_prefix
from .cli_keys import keys, orgs
from .cli_options import (
    show_version,
    ReplicaURLs,
    check_backup_destination,
    check_copy_destination,
    command_line,
    database_target,
    db_option,
    db_path,
    existing_database,
    trusted_proxies,
)
from .serving import channel, ratelimit, server
from .serving.console import (
    plug_closed_standard_streams,
    API_KEY_VARIABLE,
    DEFAULT_ORG,
    check_env_token,
    clear_failures,
    create_key,
    require_stdout,
)
from .serving.serve import Settings, configure_logging, serve
from .serving.channel import Deadlines
from .storage import (
    NotEmpty,
    UnusableDatabase,
    companions,
    describe,
    is_url,
    open_storage,
    same_database,
)
from .storage import litestream

log = logging.getLogger("pods.cli")

# Request threads per process, unless --threads says. SQLite: one (the GIL makes more
# slower). PostgreSQL: four, so that requests overlap their waits on the server and
# its commits group (measured: creates at 8 connections 1.4x those of one thread,
# GETs the same; docs/performance.md).
THREADS_DEFAULT = 1
THREADS_DEFAULT_POSTGRES = 4
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _rate(ctx, param, value):
    if value is None or value == "":
        return None
    try:
        ratelimit.parse_rate(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _limits(rate_limit, rate_burst, key_rate_limit, key_rate_burst) -> ratelimit.Limits:
    """The serve flags' rate limits; a burst without its rate is a usage error."""
    for rate, burst, names in ((rate_limit, rate_burst, ("--rate-burst", "--rate-limit")),
                               (key_rate_limit, key_rate_burst, ("--key-rate-burst", "--key-rate-limit"))):
        if burst is not None and rate is None:
            raise click.UsageError(f"{names[0]} needs {names[1]} (or its variable)")
    return ratelimit.Limits(
        org=ratelimit.Limit.of(rate_limit, rate_burst) if rate_limit else None,
        key=ratelimit.Limit.of(key_rate_limit, key_rate_burst) if key_rate_limit else None,
    )


@click.group(invoke_without_command=True)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show_version,
              help="Show the version and the database schema versions, and exit.")
@click.option("--host", envvar="PODS_HOST", default="127.0.0.1", show_default=True,
              help="Interface to listen on (env PODS_HOST).")
@click.option("--port", envvar="PODS_PORT", default=8080, show_default=True,
              type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one (env PODS_PORT).")
@db_option("pods.db")
@click.option("--threads", envvar="PODS_THREADS", default=None,
              show_default=f"{THREADS_DEFAULT}; {THREADS_DEFAULT_POSTGRES} with PostgreSQL",
              type=click.IntRange(1, 1024), help="Worker threads per process (env PODS_THREADS).")
@click.option("--workers", envvar="PODS_WORKERS", default=1, show_default=True,
              type=click.IntRange(1, 64), help="Server processes sharing the port (env PODS_WORKERS).")
@click.option("--log-level", envvar="PODS_LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="info logs one line per request (env PODS_LOG_LEVEL).")
@click.option("--trusted-proxy", envvar="PODS_TRUSTED_PROXY", default="", callback=trusted_proxies,
              help="Address(es) or network(s), comma-separated, of a reverse proxy whose X-Forwarded-For "
                   "gives the client address for the log; nobody else's is used (env PODS_TRUSTED_PROXY).")
@click.option("--header-timeout", envvar="PODS_HEADER_TIMEOUT", default=channel.HEADER_TIMEOUT,
              show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds a request's head may take to arrive, from its first byte (from the "
                   "connection's opening, for the first request) (env PODS_HEADER_TIMEOUT).")
@click.option("--keepalive-timeout", envvar="PODS_KEEPALIVE_TIMEOUT", default=channel.KEEPALIVE_TIMEOUT,
              show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds an idle kept-alive connection stays open (env PODS_KEEPALIVE_TIMEOUT).")
@click.option("--send-timeout", envvar="PODS_SEND_TIMEOUT", default=channel.SEND_TIMEOUT,
              show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds an answer may go unread: a connection whose answer makes no progress for "
                   "that long is closed (env PODS_SEND_TIMEOUT).")
@click.option("--connection-limit", envvar="PODS_CONNECTION_LIMIT", default=server.CONNECTION_LIMIT,
              show_default=True, type=click.IntRange(1, 1_000_000),
              help="Open connections per process; at the limit the one idle longest is closed to admit "
                   "a new one (env PODS_CONNECTION_LIMIT).")
@click.option("--replica", envvar="PODS_REPLICA", multiple=True, default=(), type=ReplicaURLs(),
              help="Stream the SQLite database through Litestream to this replica: file:///PATH (a USB disk, a "
                   "NAS), s3://, sftp://, gs://, abs://... (env PODS_REPLICA; docs/replication.md).")
@click.option("--rate-limit", envvar="PODS_RATE_LIMIT", default=None, callback=_rate, metavar="RATE",
              help="Requests per organization, all its keys together, as N/s or N/min; requests with no key "
                   "or an unknown one are limited so per client address. Off unless set (env PODS_RATE_LIMIT).")
@click.option("--rate-burst", envvar="PODS_RATE_BURST", default=None, type=click.IntRange(1, 1_000_000_000),
              metavar="N", help="Requests an organization may send at once under --rate-limit "
                                "[default: one second's worth, at least 1] (env PODS_RATE_BURST).")
@click.option("--key-rate-limit", envvar="PODS_KEY_RATE_LIMIT", default=None, callback=_rate, metavar="RATE",
              help="Requests per key, as N/s or N/min, on top of --rate-limit. Off unless set "
                   "(env PODS_KEY_RATE_LIMIT).")
@click.option("--key-rate-burst", envvar="PODS_KEY_RATE_BURST", default=None,
              type=click.IntRange(1, 1_000_000_000), metavar="N",
              help="Requests a key may send at once under --key-rate-limit "
                   "[default: one second's worth, at least 1] (env PODS_KEY_RATE_BURST).")
@click.option("--queue-timeout", envvar="PODS_QUEUE_TIMEOUT", default=server.QUEUE_TIMEOUT, show_default=True,
              type=click.FloatRange(0.001, 3600),
              help="Seconds a request may wait for a worker thread; past it, it is answered 503 with Retry-After "
                   "and not executed (env PODS_QUEUE_TIMEOUT).")
@click.option("--metrics-port", envvar="PODS_METRICS_PORT", default=None, show_default="off",
              type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics at /metrics on this port, a listener of its own; "
                   "0 picks a free one (env PODS_METRICS_PORT).")
@click.option("--metrics-host", envvar="PODS_METRICS_HOST", default="127.0.0.1", show_default=True,
              help="Interface the metrics listener binds to (env PODS_METRICS_HOST).")
@click.option("--metrics-by-org", envvar="PODS_METRICS_BY_ORG", is_flag=True, default=False, show_default="off",
              help="Also count requests and 429s per organization, labelled by its name (env PODS_METRICS_BY_ORG).")
@click.pass_context
def cli(ctx, host, port, db, threads, workers, log_level, trusted_proxy, header_timeout, keepalive_timeout,
        send_timeout, connection_limit, replica, rate_limit, rate_burst, key_rate_limit, key_rate_burst,
        queue_timeout, metrics_port, metrics_host, metrics_by_org):
    """Serve the Pods API, or manage its API keys and database.

    With no COMMAND, serves on HOST:PORT until SIGTERM or SIGINT. On the first
    start with no key in the database, creates a key for the organization
    "default" and prints it once. PODS_API_KEY=<token> in the environment makes
    that token a key of "default".
    """
    plug_closed_standard_streams()
    if ctx.invoked_subcommand is None:
        limits = _limits(rate_limit, rate_burst, key_rate_limit, key_rate_burst)
        configure_logging(log_level)
        if workers > 1:
            logstream.name_worker(0)  # the parent: its lines too end with worker=0, this warning's included
        if _unknown_variables():
            log.warning(_unknown_variables_message())
        if metrics_port is None and (metrics_by_org or _given(ctx, "metrics_host")):
            log.warning("--metrics-host and --metrics-by-org do nothing without --metrics-port: no metrics served")
        serve(Settings(
            db=db,
            host=host,
            port=port,
            threads=threads or (THREADS_DEFAULT_POSTGRES if is_url(db) else THREADS_DEFAULT),
            workers=workers,
            trusted_proxies=trusted_proxy,
            deadlines=Deadlines(header=header_timeout, keepalive=keepalive_timeout, send=send_timeout),
            connection_limit=connection_limit,
            limits=limits,
            queue_timeout=queue_timeout,
            api_key=os.environ.get(API_KEY_VARIABLE),
            replicas=tuple(url for url in replica if url),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_by_org=metrics_by_org,
        ))
    elif _unknown_variables():
        click.echo(f"warning: {_unknown_variables_message()}", err=True)


cli.add_command(keys)
cli.add_command(orgs)


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was set, on the command line or by its variable."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def documented_variables(command: click.Command | None = None) -> set[str]:
    """Every PODS_* variable pods reads: PODS_API_KEY and each option's own variable,
    so a new option with an ``envvar`` is documented here without a list to keep."""
    command = command or cli
    names = {API_KEY_VARIABLE}
    for param in command.params:
        if isinstance(param.envvar, str):
            names.add(param.envvar)
        elif param.envvar:
            names.update(param.envvar)
    for subcommand in getattr(command, "commands", {}).values():
        names |= documented_variables(subcommand)
    return names


def _unknown_variables() -> list[str]:
    known = documented_variables()
    return sorted(name for name in os.environ if name.startswith("PODS_") and name not in known)


def _unknown_variables_message() -> str:
    return (
        f"ignoring unknown environment variable(s) {', '.join(_unknown_variables())} "
        f"(pods reads {', '.join(sorted(documented_variables()))})"
    )


@cli.command("init")
@db_option(None)
@click.pass_context
def init_command(ctx, db):
    """Create a new database (a SQLite file readable by its owner only, or the
    tables in an empty PostgreSQL database) and a key for the organization
    "default": PODS_API_KEY if set, else a new one, whose token is printed once, as
    the last line."""
    target = db_path(ctx, db)
    env_token = os.environ.get(API_KEY_VARIABLE)
    check_env_token(env_token)
    if not env_token:
        require_stdout()
    with clear_failures(target):
        storage = open_storage(target)
        try:
            storage.create()
        except FileExistsError:
            raise click.ClickException(
                f"database {storage.description} already exists; init only creates a new one"
            ) from None
        try:
            if env_token:
                key = storage.insert_api_key(DEFAULT_ORG, hash_key(env_token), token_prefix(env_token))
            else:
                create_key(storage, DEFAULT_ORG)
        except BaseException:
            storage.discard_new()  # made just now: nothing of anyone's is lost
            raise
        finally:
            storage.close()
    if env_token:
        with contextlib.suppress(OSError):  # the operator holds this token already
            click.echo(f'Stored {API_KEY_VARIABLE} as API key {key["key_id"]} for organization "{DEFAULT_ORG}".')


@cli.command("migrate")
@db_option(None)
@click.pass_context
def migrate_command(ctx, db):
    """Bring a database made by an older pods to the current schema (serving does
    the same at start); logs one line per step."""
    target = db_path(ctx, db)
    with existing_database(target, current=False) as storage:
        before, current = storage.schema_version(), storage.target_version
        if before == current:
            click.echo(f"{storage.description}: schema version {before} is current; nothing to do.")
            return
        configure_logging("info")  # the steps' lines
        with clear_failures(target):
            storage.migrate()
    click.echo(f"Migrated {storage.description} from schema version {before} to {current}.")


@cli.command("backup")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@db_option(None)
@click.pass_context
def backup_command(ctx, path, force, db):
    """Write a consistent copy of the database to PATH, safely while serving.

    Refuses PATH when it is the database or one of its -wal, -shm, -journal files,
    however spelled, and when it exists, unless --force.
    """
    source = db_path(ctx, db)
    if is_url(source):
        raise click.ClickException(
            f"backup copies a SQLite database; for PostgreSQL, `{command_line('copy', describe(source), path)}`"
            " makes a SQLite copy of it (or use PostgreSQL's own tools)"
        )
    with existing_database(source, current=False, read_only=True) as storage:
        check_backup_destination(path, source, force)
        try:
            storage.backup(path)
        except FileExistsError:
            raise click.ClickException(
                f"{path}.partial exists, left by an interrupted backup; remove it and run again"
            ) from None
        except OSError as e:
            raise click.ClickException(f"cannot write {e.filename}: {e.strerror}") from None
    with existing_database(path, current=False, read_only=True) as storage:
        pods = storage.count_pods()
    click.echo(f"Backed up {source} to {path}: {pods} pods, integrity ok.")


@cli.command("check")
@db_option(None)
@click.pass_context
def check_command(ctx, db):
    """Check that the database is a pods database of a known schema version, then
    (SQLite) its integrity and foreign keys; exits 1 on any problem. Changes nothing."""
    target = db_path(ctx, db)
    with existing_database(target, current=False, read_only=True) as storage:
        version, current = storage.schema_version(), storage.target_version
        problems = storage.problems()
        name = storage.description
    if problems:
        for line in problems:
            click.echo(line, err=True)
        raise click.ClickException(f"database {name} is damaged ({len(problems)} problem(s))")
    if version < current:
        click.echo(
            f"{name}: ok (schema version {version}, older than this pods' {current}: "
            f"`{command_line('migrate', '--db', describe(target))}` upgrades it)"
        )
    else:
        click.echo(f"{name}: ok")


@cli.command("copy")
@click.argument("source", callback=database_target)
@click.argument("dest", callback=database_target)
def copy_command(source, dest):
    """Copy everything (organizations, keys, pods, settings) from SOURCE to DEST,
    each a SQLite file or a postgresql:// URL, in one consistent read of SOURCE
    (safe while a server writes to it). DEST must hold no pods data: a new file, an
    empty database, or the schema with no rows; it is created or set up as needed.
    Prints the counts copied, verified on DEST. Page tokens and keys issued before
    keep working against DEST. Refuses a DEST that is a database's -wal, -shm or
    -journal file, or has such files beside it."""
    if same_database(source, dest):
        raise click.ClickException("SOURCE and DEST are the same database")
    if not is_url(dest):
        check_copy_destination(dest)
    with existing_database(source, read_only=True) as origin:
        with clear_failures(dest):
            target = open_storage(dest)
            created = not target.exists()
            if created and is_url(dest):
                raise click.ClickException(f"database {target.description} does not exist; create it first")
            if is_url(source) and is_url(dest) and origin.is_same_database_as(target):
                raise click.ClickException("SOURCE and DEST are the same database")
            try:
                if not created:
                    target.require_empty()  # before prepare(), which would migrate an older schema
                target.prepare()  # a new SQLite file (owner-only), or the tables in an empty database
                with origin.snapshot() as rows_of:
                    counts = target.import_all(rows_of)
            except NotEmpty as e:
                raise click.ClickException(
                    f"{target.description} holds pods data ({e}); copy writes only into an empty database"
                ) from None
            except BaseException:
                if created:
                    target.discard_new()
                raise
            finally:
                target.close()
    click.echo(
        f"Copied {describe(source)} to {target.description}: organizations {counts['organization']},"
        f" keys {counts['api_key']}, pods {counts['pod']}, settings {counts['setting']}"
        f" (each count verified at the destination)."
    )


@cli.command("restore")
@click.argument("url")
@click.argument("dest", callback=database_target)
@click.option("--timestamp", metavar="RFC3339",
              help="Restore the database as it was at this time (e.g. 2026-11-29T04:00:00Z); default: its latest state.")
def restore_command(url, dest, timestamp):
    """Write the database from the replica at URL (as --replica names it) to DEST,
    a new file readable by its owner only, then check it as `check` does; prints
    the counts it found. Nothing is left behind on a failure."""
    try:
        litestream.check_replica_url(url)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if is_url(dest):
        raise click.ClickException("restore writes a SQLite file; name a new file as DEST")
    moment = None
    if timestamp is not None:
        try:
            moment = litestream.parse_timestamp(timestamp)
        except ValueError as e:
            raise click.ClickException(f"--timestamp {timestamp!r} {e}") from None
    if os.path.lexists(dest):
        raise click.ClickException(f"{dest} exists; restore writes only a new file (choose another DEST)")
    in_use = [name for name in companions(dest) if os.path.lexists(name)]
    if in_use:
        raise click.ClickException(
            f"{in_use[0]} exists: {dest} may be a database in use; remove {in_use[0]} or choose another DEST"
        )
    try:
        counts = litestream.restore(litestream.find_litestream(), url, dest, moment)
    except UnusableDatabase as e:
        raise click.ClickException(str(e)) from None
    when = f"as it was at {moment:%Y-%m-%dT%H:%M:%S.%fZ}" if moment else "its latest state"
    click.echo(
        f"Restored {litestream.redact(url)} ({when}) to {dest}: organizations {counts.get('organization', 0)},"
        f" keys {counts.get('api_key', 0)}, pods {counts.get('pod', 0)}, settings {counts.get('setting', 0)};"
        f" check ok."
    )
