"""What the operator sees of the database at a terminal: expected failures as
one line (never a traceback, never a password), and a new key's token shown once."""

import contextlib
import os
import sys
from contextlib import contextmanager

import click

from ..api import accesslog
from ..api.auth import hash_key, new_token, token_prefix
from ..storage import UnusableDatabase, describe, driver_errors, error_text, open_storage

DEFAULT_ORG = "default"
API_KEY_VARIABLE = "PODS_API_KEY"
API_KEY_MIN_LENGTH = 32
MAKE_A_TOKEN = "python3 -c \"import secrets; print('pods_' + secrets.token_urlsafe(32))\""


def shown(text: str) -> str:
    """``text`` for a terminal: as it is when printable, else escaped whole (a name
    set over the API may hold, say, a C1 control character a terminal obeys)."""
    return text if text.isprintable() else accesslog.escape_text(text)


@contextmanager
def clear_failures(target: str):
    """Expected failures (unreadable or foreign database, locked, disk full, server
    unreachable, too new a schema) become one line on stderr and exit status 1, not
    a traceback. A URL's password never appears."""
    try:
        yield
    except UnusableDatabase as e:
        raise click.ClickException(str(e)) from None
    except driver_errors() as e:
        raise click.ClickException(f"database {describe(target)}: {error_text(e, target)}") from None
    except OSError as e:
        raise click.ClickException(f"database {describe(target)}: {e.strerror}") from None


@contextmanager
def open_database(target: str):
    """The storage at ``target``, created or brought to the current schema as
    serving does, with expected failures reported in one line."""
    with clear_failures(target):
        storage = open_storage(target)
        try:
            storage.prepare()
            yield storage
        finally:
            storage.close()


def check_env_token(token: str | None) -> None:
    """Refuse a PODS_API_KEY that could never authenticate or is easy to guess.

    A client sends the token in a header: HTTP trims blanks around it and reads
    non-ASCII as Latin-1, so only visible ASCII can match, and a short one is guessable.
    """
    if not token:
        return
    if len(token) < API_KEY_MIN_LENGTH:
        problem = f"is {len(token)} character(s) long"
    elif not all("!" <= c <= "~" for c in token):
        problem = "holds a space, a control character or a non-ASCII character"
    else:
        return
    raise click.ClickException(
        f"{API_KEY_VARIABLE} {problem}; it must be at least {API_KEY_MIN_LENGTH} visible ASCII "
        f"characters. Make one with: {MAKE_A_TOKEN}"
    )


class _StdoutUnwritable(Exception):
    """Writing a new key's token to stdout failed."""


def require_stdout() -> None:
    """Refuse early when stdout is closed (started with ``>&-``): a new key could not be shown."""
    if sys.stdout is None:
        raise click.ClickException("stdout is closed, so a new API key could not be shown; nothing was stored")


def create_key(storage, org: str, pod_id: str | None = None, name: str | None = None,
                first: bool = False) -> None:
    """Store a new key for ``org`` (scoped to ``pod_id``, if given) and print it:
    once, as the last line. ``first``: only if the database has no key yet (another
    server starting at the same moment may have made it).

    Storing and showing are one step: the key is committed only once its token has
    been written and flushed to stdout, so no key is ever stored unseen.
    """
    require_stdout()
    token = new_token()

    shown = []

    def show(key) -> None:
        scope = f'pod {pod_id} of organization "{org}"' if pod_id else f'organization "{org}"'
        try:
            click.echo(f"Created API key {key['key_id']} for {scope}. It is shown only once:")
            click.echo(token)
            sys.stdout.flush()
        except (OSError, ValueError) as e:  # ValueError: written to a closed file
            raise _StdoutUnwritable(getattr(e, "strerror", None) or str(e)) from None
        shown.append(True)

    try:
        storage.insert_api_key(org, hash_key(token), token_prefix(token), name, pod_id, before_commit=show,
                               only_if_first=first)
    except driver_errors() as e:
        if not shown:
            raise
        # Shown, then the commit failed (a full disk, say): the token printed is void.
        raise click.ClickException(
            f"database {storage.description}: {e}; the key printed above was NOT stored and will not work"
        ) from None
    except LookupError:
        raise click.ClickException(f'organization "{org}" has no pod {pod_id}') from None
    except _StdoutUnwritable as e:
        _discard_stdout()
        raise click.ClickException(
            f"cannot write a new API key to stdout ({e}); nothing was stored"
        ) from None


def _discard_stdout() -> None:
    """Point a stdout that failed at /dev/null, so that the interpreter's last flush
    of what is still buffered (the unstored token) fails nowhere and prints nothing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
