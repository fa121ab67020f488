"""The operator's command line: ``python app.py [serve options] [COMMAND]``."""

import contextlib
import logging
import os
import shlex
from contextlib import contextmanager

import click
from click.core import ParameterSource

from . import __version__
from .api import accesslog
from .api.auth import hash_key, token_prefix
from .serving import server
from .serving.console import (
    API_KEY_VARIABLE,
    DEFAULT_ORG,
    check_env_token,
    clear_failures,
    create_key,
    require_stdout,
    shown,
)
from .serving.serve import Settings, configure_logging, serve
from .serving.server import Deadlines
from .storage import NotEmpty, describe, is_url, open_storage, same_database
from .storage.sqlite import backup, companions, database_file_suffix
from .storage.url import looks_like_connection_string

log = logging.getLogger("pods.cli")

# Request threads per process, unless --threads says. SQLite: one (the GIL makes more
# slower). PostgreSQL: four, so that requests overlap their waits on the server and
# its commits group (measured: creates at 8 connections 1.4x those of one thread,
# GETs the same; docs/performance.md).
THREADS_DEFAULT = 1
THREADS_DEFAULT_POSTGRES = 4
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _org_name(ctx, param, value):
    if value is not None and not (1 <= len(value) <= 255 and value.isprintable()):
        raise click.BadParameter("must be 1 to 255 printable characters")
    return value


def db_option(default):
    """--db for the group (with its variable and default) or for a command (neither:
    a command's --db counts only when given on its command line)."""
    return click.option(
        "--db",
        envvar="PODS_DB" if default is not None else None,
        default=default,
        show_default=default is not None,
        callback=_database_target,
        help="SQLite database file or postgresql:// URL (env PODS_DB)." if default is not None
        else "SQLite database file or postgresql:// URL (env PODS_DB; default pods.db).",
    )


def _database_target(ctx, param, value):
    # SQLite would take "" and ":memory:" for a database that vanishes with the process.
    if value is not None and (value.strip() in ("", ":memory:") or value.startswith("file:")):
        raise click.BadParameter("must name a database file or a postgresql:// URL")
    if value is not None and os.path.isdir(value):  # SQLite would say "disk I/O error"
        example = os.path.join(value, "pods.db")
        raise click.BadParameter(f"{value} is a directory; name a database file in it, e.g. {example}")
    # " postgresql://..." or "host=db password=..." would be a SQLite file of that name, shown in messages.
    if value is not None and not is_url(value) and looks_like_connection_string(value):
        raise click.BadParameter(
            "names a database server, not as pods reads one: write a URL, postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        )
    return value


def _key_name(ctx, param, value):
    if value is not None and not (1 <= len(value) <= 255 and value.isprintable()):
        raise click.BadParameter("must be 1 to 255 printable characters")
    return value


def _trusted_proxies(ctx, param, value):
    try:
        return accesslog.parse_trusted_proxies(value or "")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _db_path(ctx: click.Context, db: str | None) -> str:
    """The database a command works on: --db on the command line (after the command
    name or before it), else PODS_DB, else pods.db. Two different explicit values
    are a usage error, never a silent choice."""
    root = ctx.find_root()
    before = root.params["db"]
    if db is None:
        return before
    if root.get_parameter_source("db") is ParameterSource.COMMANDLINE and not same_database(before, db):
        raise click.UsageError(
            f"--db given twice: {describe(before)} before the command name and {describe(db)} after it"
        )
    return db


def _command_line(*args: str) -> str:
    """How the operator runs this program with ``args``, for messages that say what to run."""
    name = click.get_current_context().find_root().info_name or "pods"
    program = f"python {name}" if name.endswith(".py") else name
    return " ".join([program, *map(shlex.quote, args)])


@contextmanager
def _existing_database(target: str, current: bool = True, read_only: bool = False):
    """The pods database at ``target``, which must exist; with ``current``, it must
    have this version's schema. Nothing is changed on the way: only serving, init,
    migrate and copy create or upgrade a database; ``read_only`` commands change
    nothing at all."""
    with clear_failures(target):
        storage = open_storage(target, read_only=read_only)
        try:
            if not storage.exists():
                if is_url(target):
                    hint = f"create it, then `{_command_line('init', '--db', describe(target))}` sets it up"
                else:
                    hint = f"`{_command_line('init', '--db', target)}` creates a new one"
                raise click.ClickException(
                    f"database {storage.description} does not exist (check --db or PODS_DB; {hint})"
                )
            version = storage.schema_version()
            if current and version < storage.target_version:
                raise click.ClickException(
                    f"database {storage.description} has schema version {version}, older than this pods' "
                    f"{storage.target_version}: run `{_command_line('migrate', '--db', describe(target))}` "
                    f"(or start the server) first"
                )
            yield storage
        finally:
            storage.close()


@click.group(invoke_without_command=True)
@click.version_option(__version__, prog_name="pods")
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
@click.option("--send-timeout", envvar="PODS_SEND_TIMEOUT", default=server.SEND_TIMEOUT,
              show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds an answer may go unread: a connection whose answer makes no progress for "
                   "that long is closed (env PODS_SEND_TIMEOUT).")
@click.option("--connection-limit", envvar="PODS_CONNECTION_LIMIT", default=server.CONNECTION_LIMIT,
              show_default=True, type=click.IntRange(1, 1_000_000),
              help="Open connections per process; at the limit the one idle longest is closed to admit "
                   "a new one (env PODS_CONNECTION_LIMIT).")
@click.option("--metrics-port", envvar="PODS_METRICS_PORT", default=None, type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics at /metrics on this port, a listener of its own; off unless set; "
                   "0 picks a free one (env PODS_METRICS_PORT).")
@click.option("--metrics-host", envvar="PODS_METRICS_HOST", default="127.0.0.1", show_default=True,
              help="Interface the metrics listener binds to (env PODS_METRICS_HOST).")
@click.option("--metrics-by-org", envvar="PODS_METRICS_BY_ORG", is_flag=True, default=False,
              help="Also count requests and 429s per organization, labelled by its name (env PODS_METRICS_BY_ORG).")
@click.pass_context
def cli(ctx, host, port, db, threads, workers, log_level, trusted_proxy, header_timeout, keepalive_timeout,
        send_timeout, connection_limit, metrics_port, metrics_host, metrics_by_org):
    """Serve the Pods API, or manage its API keys and database.

    With no COMMAND, serves on HOST:PORT until SIGTERM or SIGINT. On the first
    start with no key in the database, creates a key for the organization
    "default" and prints it once. PODS_API_KEY=<token> in the environment makes
    that token a key of "default".
    """
    _plug_closed_standard_streams()
    if ctx.invoked_subcommand is None:
        configure_logging(log_level)
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
            api_key=os.environ.get(API_KEY_VARIABLE),
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_by_org=metrics_by_org,
        ))
    elif _unknown_variables():
        click.echo(f"warning: {_unknown_variables_message()}", err=True)


def _plug_closed_standard_streams() -> None:
    """Open /dev/null on any of file descriptors 0-2 that the process started without
    (``2>&-``), so that no file or socket opened later takes that number and
    receives what is meant for stdout or stderr (the log writes to descriptor 2).
    ``sys.stdout`` stays None for a closed stdout, which is how a new key refuses
    to be stored unseen."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one


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
    target = _db_path(ctx, db)
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
    target = _db_path(ctx, db)
    with _existing_database(target, current=False) as storage:
        before, current = storage.schema_version(), storage.target_version
        if before == current:
            click.echo(f"{storage.description}: schema version {before} is current; nothing to do.")
            return
        configure_logging("info")  # the steps' lines
        with clear_failures(target):
            storage.migrate()
    click.echo(f"Migrated {storage.description} from schema version {before} to {current}.")


@cli.group()
def keys():
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--org", required=True, callback=_org_name, help="Organization the key belongs to.")
@click.option("--pod", "pod_id", help="Scope the key to this pod of the organization (default: all of it).")
@click.option("--name", callback=_key_name, help="Name of the key (default: the start of its token).")
@db_option(None)
@click.pass_context
def keys_create(ctx, org, pod_id, name, db):
    """Create a key with every permission; its token is printed once, as the last line."""
    with _existing_database(_db_path(ctx, db)) as storage:
        create_key(storage, org, pod_id, name)


@keys.command("list")
@db_option(None)
@click.pass_context
def keys_list(ctx, db):
    """One key per line, tab-separated: key id, organization, created, revoked (or
    -), name, scope (org, or the pod's id)."""
    with _existing_database(_db_path(ctx, db), read_only=True) as storage:
        rows = storage.list_api_keys()
    for row in rows:
        columns = [row["key_id"], row["org_name"], row["created_at"], row["revoked_at"] or "-",
                   row["name"], row["pod_id"] or "org"]
        click.echo("\t".join(shown(column) for column in columns))


@keys.command("revoke")
@click.argument("key_id")
@db_option(None)
@click.pass_context
def keys_revoke(ctx, key_id, db):
    """Revoke a key; it fails from the next request on."""
    with _existing_database(_db_path(ctx, db)) as storage:
        revoked_at = storage.revoke_api_key(key_id)
    if revoked_at is None:
        raise click.ClickException(f"no key with id {key_id}")
    click.echo(f"Revoked API key {key_id} at {revoked_at}.")


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
    source = _db_path(ctx, db)
    if is_url(source):
        raise click.ClickException(
            f"backup copies a SQLite database; for PostgreSQL, `{_command_line('copy', describe(source), path)}`"
            " makes a SQLite copy of it (or use PostgreSQL's own tools)"
        )
    with _existing_database(source, current=False, read_only=True) as storage:
        _check_backup_destination(path, source, force)
        try:
            backup(storage.connection(), path)
        except FileExistsError:
            raise click.ClickException(
                f"{path}.partial exists, left by an interrupted backup; remove it and run again"
            ) from None
        except OSError as e:
            raise click.ClickException(f"cannot write {e.filename}: {e.strerror}") from None
    with _existing_database(path, current=False, read_only=True) as storage:
        pods = storage.count_pods()
    click.echo(f"Backed up {source} to {path}: {pods} pods, integrity ok.")


def _check_backup_destination(path: str, source: str, force: bool) -> None:
    if not path.strip():
        raise click.BadParameter("must name a file", param_hint="PATH")
    # PATH.partial is written first: it must not be the database either.
    for written in (path, path + ".partial"):
        suffix = database_file_suffix(written, source)
        if suffix is not None:
            what = f"the {suffix} file of the database" if suffix else "the database"
            raise click.ClickException(
                f"backup destination {written} is {what} being backed up ({source}); choose another path"
            )
    if os.path.lexists(path) and not force:
        raise click.ClickException(f"{path} exists; add --force to replace it")
    # A new file beside another database's WAL would have that WAL replayed into it.
    in_use = [name for name in companions(path) if os.path.lexists(name)]
    if in_use:
        raise click.ClickException(
            f"{in_use[0]} exists: {path} may be a database in use; stop what uses it or remove "
            f"{in_use[0]}, then run again"
        )


@cli.command("check")
@db_option(None)
@click.pass_context
def check_command(ctx, db):
    """Check that the database is a pods database of a known schema version, then
    (SQLite) its integrity and foreign keys; exits 1 on any problem. Changes nothing."""
    target = _db_path(ctx, db)
    with _existing_database(target, current=False, read_only=True) as storage:
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
            f"`{_command_line('migrate', '--db', describe(target))}` upgrades it)"
        )
    else:
        click.echo(f"{name}: ok")


@cli.command("copy")
@click.argument("source", callback=_database_target)
@click.argument("dest", callback=_database_target)
def copy_command(source, dest):
    """Copy everything (organizations, keys, pods, settings) from SOURCE to DEST,
    each a SQLite file or a postgresql:// URL, in one consistent read of SOURCE
    (safe while a server writes to it). DEST must hold no pods data: a new file, an
    empty database, or the schema with no rows; it is created or set up as needed.
    Prints the counts copied, verified on DEST. Page tokens and keys issued before
    keep working against DEST."""
    if same_database(source, dest):
        raise click.ClickException("SOURCE and DEST are the same database")
    with _existing_database(source, read_only=True) as origin:
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
