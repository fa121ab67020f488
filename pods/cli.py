"""The operator's command line: ``python app.py [serve options] [COMMAND]``."""

import contextlib
import difflib
import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta

import click
from click.core import ParameterSource

from . import __version__
from .api import logstream
from .api.auth import hash_key, token_prefix
from .api.permissions import PERMISSIONS, permissions_from
from .cli_options import (
    command_line,
    database_target,
    db_option,
    db_path,
    existing_database,
    key_name,
    org_name,
    trusted_proxies,
)
from .serving import channel, server
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
from .serving.channel import Deadlines
from .storage import NotEmpty, describe, is_url, open_storage, same_database, utc_text
from .storage.migrations import version_history
from .storage.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from .storage.sqlite import backup, companions, database_file_suffix

log = logging.getLogger("pods.cli")

# Request threads per process, unless --threads says. SQLite: one (the GIL makes more
# slower). PostgreSQL: four, so that requests overlap their waits on the server and
# its commits group (measured: creates at 8 connections 1.4x those of one thread,
# GETs the same; docs/performance.md).
THREADS_DEFAULT = 1
THREADS_DEFAULT_POSTGRES = 4
LOG_LEVELS = ["debug", "info", "warning", "error"]
# keys create --expires-at: RFC 3339's date-time, as the API takes expires_at
# (pods/api/schemas.py's RFC3339; not imported, which would load marshmallow for every command).
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")
# keys create --expires-in: a number and a unit.
DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}




def _show_version(ctx, param, value):
    """``--version``: this pods' version and the database schema versions it writes
    (SQLite and PostgreSQL count their versions apart), read without psycopg."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.resources import files

    postgres_version = len(version_history(files("pods.storage") / "postgres_migrations"))
    click.echo(f"pods, version {__version__} (database schema version {SQLITE_SCHEMA_VERSION} on SQLite,"
               f" {postgres_version} on PostgreSQL)")
    ctx.exit()


@click.group(invoke_without_command=True)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
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


@cli.group()
def keys():
    """Create, list and revoke API keys."""


def _permission_names(ctx, param, values):
    """--permission NAME, repeated: the set of names (None when not given: every
    permission), each one the API takes."""
    for value in values:
        if value in PERMISSIONS:
            continue
        if "," in value or " " in value:
            hint = "; give --permission once per name"
        else:
            close = ([value.lower()] if value.lower() in PERMISSIONS
                     else difflib.get_close_matches(value, PERMISSIONS, n=1))
            hint = f" (did you mean {close[0]}?)" if close else ""
        raise click.BadParameter(f"{value!r} is not a permission name{hint}; the names the API takes are "
                                 f"{', '.join(PERMISSIONS)}")
    return frozenset(values) if values else None


def _expires_in(ctx, param, value):
    """--expires-in 30d: the expiry that long from now, as stored."""
    if value is None:
        return None
    m = DURATION.fullmatch(value)
    if m is None or int(m.group(1)) == 0:
        raise click.BadParameter(f"{value!r} is not a duration: a whole number above 0 and a unit, "
                                 f"s, m, h, d or w (30d, 12h, 90m)")
    try:
        return utc_text(datetime.now(UTC) + timedelta(seconds=int(m.group(1)) * DURATION_UNITS[m.group(2)]))
    except OverflowError:
        raise click.BadParameter(f"{value!r} ends after the year 9999") from None


def _expires_at(ctx, param, value):
    """--expires-at 2027-01-01T00:00:00Z: an RFC 3339 time in the future, as stored."""
    if value is None:
        return None
    try:
        if not RFC3339.fullmatch(value):
            raise ValueError
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an RFC 3339 time with an offset, "
                                 f"e.g. 2030-01-01T00:00:00Z") from None
    if moment <= datetime.now(UTC):
        raise click.BadParameter(f"{value} is not in the future")
    try:
        return utc_text(moment)
    except OverflowError:  # in UTC, past 9999-12-31
        raise click.BadParameter(f"{value} is after the year 9999 in UTC") from None


@keys.command("create")
@click.option("--org", required=True, callback=org_name, help="Organization the key belongs to.")
@click.option("--pod", "pod_id", help="Scope the key to this pod of the organization (default: all of it).")
@click.option("--name", callback=key_name, help="Name of the key (default: the start of its token).")
@click.option("--permission", "permissions", multiple=True, metavar="NAME", callback=_permission_names,
              help="Grant this permission; repeat for each (default: every permission). Names as the API's: "
                   "pod_read, pod_create, pod_delete, api_key_read, api_key_create, api_key_update, "
                   "api_key_delete, and the SDK's others.")
@click.option("--expires-in", metavar="DURATION", callback=_expires_in,
              help="The key stops working this long from now: 30d, 12h, 90m (units s, m, h, d, w).")
@click.option("--expires-at", metavar="TIME", callback=_expires_at,
              help="The key stops working at this RFC 3339 time, e.g. 2030-01-01T00:00:00Z.")
@db_option(None)
@click.pass_context
def keys_create(ctx, org, pod_id, name, permissions, expires_in, expires_at, db):
    """Create a key; its token is printed on stdout, once, as the last line, and
    stderr says which key it is once it is stored. A key for an organization that
    has no key and no pod yet starts that organization: stderr says so."""
    if expires_in is not None and expires_at is not None:
        raise click.UsageError("--expires-in and --expires-at are mutually exclusive: give one")
    with existing_database(db_path(ctx, db)) as storage:
        notice = None
        if pod_id is None and storage.is_new_organization(org):  # said once the key is stored
            notice = (f'Started a new organization "{shown(org)}": it had no key and no pod (if you meant an '
                      f"existing one, `{command_line('orgs', 'list')}` lists them).")
        create_key(storage, org, pod_id, name, permissions=permissions, expires_at=expires_in or expires_at,
                   notice=notice)


def _permissions_column(stored: str | None) -> str:
    """keys list's permissions column: "all" (every permission, as stored without a
    set), "none", or the names, comma-separated."""
    if stored is None:
        return "all"
    return ",".join(name for name in PERMISSIONS if name in permissions_from(stored)) or "none"


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key and line, for scripts.")
@db_option(None)
@click.pass_context
def keys_list(ctx, as_json, db):
    """One key per line, tab-separated, oldest first: key id, organization, created,
    revoked (or -), name, scope (org, or the pod's id), expires (or -), permissions
    (all, or the names, comma-separated). Never a token. Columns are only ever added
    at the end. --json: one object per line with these and prefix, used_at, expired."""
    with existing_database(db_path(ctx, db), read_only=True) as storage:
        rows = storage.list_api_keys()
    now = utc_text(datetime.now(UTC))
    for row in rows:
        if as_json:
            permissions = row["permissions"]
            click.echo(json.dumps({
                "key_id": row["key_id"], "organization": row["org_name"], "created_at": row["created_at"],
                "revoked_at": row["revoked_at"], "name": row["name"], "pod_id": row["pod_id"],
                "expires_at": row["expires_at"],
                "permissions": None if permissions is None else [p for p in PERMISSIONS
                                                                 if p in permissions_from(permissions)],
                "prefix": row["prefix"], "used_at": row["used_at"],
                "expired": row["expires_at"] is not None and row["expires_at"] <= now,
            }))
            continue
        columns = [row["key_id"], row["org_name"], row["created_at"], row["revoked_at"] or "-",
                   row["name"], row["pod_id"] or "org", row["expires_at"] or "-",
                   _permissions_column(row["permissions"])]
        click.echo("\t".join(shown(column) for column in columns))


@keys.command("revoke")
@click.argument("key_id")
@db_option(None)
@click.pass_context
def keys_revoke(ctx, key_id, db):
    """Revoke a key; it fails from the next request on."""
    with existing_database(db_path(ctx, db)) as storage:
        revoked_at = storage.revoke_api_key(key_id)
    if revoked_at is None:
        raise click.ClickException(f"no key with id {key_id}")
    click.echo(f"Revoked API key {key_id} at {revoked_at}.")


@cli.group()
def orgs():
    """List organizations."""


@orgs.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per organization and line, for scripts.")
@db_option(None)
@click.pass_context
def orgs_list(ctx, as_json, db):
    """One organization per line, tab-separated, oldest first: name, keys (not
    revoked; expired ones included, as the API lists them), pods, created. Columns
    are only ever added at the end."""
    with existing_database(db_path(ctx, db), read_only=True) as storage:
        rows = storage.list_organizations()
    for row in rows:
        if as_json:
            click.echo(json.dumps({"name": row["name"], "keys": row["keys"], "pods": row["pods"],
                                   "created_at": row["created_at"]}))
        else:
            click.echo("\t".join([shown(row["name"]), str(row["keys"]), str(row["pods"]), row["created_at"]]))


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
        _check_backup_destination(path, source, force)
        try:
            backup(storage.connection(), path)
        except FileExistsError:
            raise click.ClickException(
                f"{path}.partial exists, left by an interrupted backup; remove it and run again"
            ) from None
        except OSError as e:
            raise click.ClickException(f"cannot write {e.filename}: {e.strerror}") from None
    with existing_database(path, current=False, read_only=True) as storage:
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
    keep working against DEST."""
    if same_database(source, dest):
        raise click.ClickException("SOURCE and DEST are the same database")
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
