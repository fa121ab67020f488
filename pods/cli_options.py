"""The command line's shared parameters: each flag's checks, which database a
command works on, and opening it as a command expects to find it."""

import os
import shlex
from contextlib import contextmanager

import click
from click.core import ParameterSource

from . import __version__
from .api import accesslog
from .serving.console import clear_failures
from .storage import companions, database_file_suffix, describe, is_url, open_storage, same_database
from .storage.migrations import schema_versions
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


class ReplicaURLs(click.ParamType):
    """--replica: repeatable; its variable PODS_REPLICA holds URLs separated by commas.
    Checked when serving (``serving/serve.py``), so that a refusal is one line."""

    name = "URL"
    envvar_list_splitter = ","

    def convert(self, value, param, ctx):
        return value.strip() if isinstance(value, str) else value


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


def check_backup_destination(path: str, source: str, force: bool) -> None:
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


def check_copy_destination(path: str) -> None:
    """A SQLite DEST of copy is no database's -wal, -shm or -journal file (SQLite
    would take the copy for that database's journal, and delete it), and has none
    of its own beside it (a new file beside another database's WAL would have that
    WAL replayed into it): as backup refuses them."""
    for spelling in dict.fromkeys([path, os.path.realpath(path)]):
        for suffix in companions(""):  # "-wal", "-shm", "-journal"
            if spelling.lower().endswith(suffix):  # any case: some file systems ignore it
                base = spelling[: -len(suffix)]
                whose = "the database" if os.path.lexists(base) else "a database"
                raise click.ClickException(
                    f"copy destination {path} is the {suffix} file of {whose} {base}: SQLite would take the"
                    " copy for that database's own file and delete it; choose another path"
                )
    in_use = [name for name in companions(path) if os.path.lexists(name)]
    if in_use:
        raise click.ClickException(
            f"{in_use[0]} exists: {path} may be a database in use; stop what uses it or remove "
            f"{in_use[0]}, then run again"
        )


def show_version(ctx, param, value):
    """``--version``: this pods' version and the database schema versions it writes
    (SQLite and PostgreSQL count their versions apart), read without psycopg."""
    if not value or ctx.resilient_parsing:
        return
    versions = schema_versions()
    click.echo(f"pods, version {__version__} (database schema version {versions['SQLite']} on SQLite,"
               f" {versions['PostgreSQL']} on PostgreSQL)")
    ctx.exit()
