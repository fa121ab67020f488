"""The command line's shared parameters: each flag's checks, which database a
command works on, and opening it as a command expects to find it."""

import os
import shlex
from contextlib import contextmanager

import click
from click.core import ParameterSource

from .api import accesslog
from .serving.console import clear_failures
from .storage import describe, is_url, open_storage, same_database
from .storage.url import looks_like_connection_string


def org_name(ctx, param, value):
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
        callback=database_target,
        help="SQLite database file or postgresql:// URL (env PODS_DB)." if default is not None
        else "SQLite database file or postgresql:// URL (env PODS_DB; default pods.db).",
    )


def database_target(ctx, param, value):
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


def key_name(ctx, param, value):
    if value is not None and not (1 <= len(value) <= 255 and value.isprintable()):
        raise click.BadParameter("must be 1 to 255 printable characters")
    return value


def trusted_proxies(ctx, param, value):
    try:
        return accesslog.parse_trusted_proxies(value or "")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def db_path(ctx: click.Context, db: str | None) -> str:
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


def command_line(*args: str) -> str:
    """How the operator runs this program with ``args``, for messages that say what to run."""
    name = click.get_current_context().find_root().info_name or "pods"
    program = f"python {name}" if name.endswith(".py") else name
    return " ".join([program, *map(shlex.quote, args)])


@contextmanager
def existing_database(target: str, current: bool = True, read_only: bool = False):
    """The pods database at ``target``, which must exist; with ``current``, it must
    have this version's schema. Nothing is changed on the way: only serving, init,
    migrate and copy create or upgrade a database; ``read_only`` commands change
    nothing at all."""
    with clear_failures(target):
        storage = open_storage(target, read_only=read_only)
        try:
            if not storage.exists():
                if is_url(target):
                    hint = f"create it, then `{command_line('init', '--db', describe(target))}` sets it up"
                else:
                    hint = f"`{command_line('init', '--db', target)}` creates a new one"
                raise click.ClickException(
                    f"database {storage.description} does not exist (check --db or PODS_DB; {hint})"
                )
            version = storage.schema_version()
            if current and version < storage.target_version:
                raise click.ClickException(
                    f"database {storage.description} has schema version {version}, older than this pods' "
                    f"{storage.target_version}: run `{command_line('migrate', '--db', describe(target))}` "
                    f"(or start the server) first"
                )
            yield storage
        finally:
            storage.close()
