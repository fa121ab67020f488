"""What the operator sees of the database at a terminal: expected failures as
one line (never a traceback, never a password), and a new key's token shown once."""

import contextlib
import logging
import os
import sys
from contextlib import contextmanager

import click

from ..api import accesslog
from ..api.auth import hash_key, new_token, token_prefix
from ..api.permissions import PERMISSIONS, stored_permissions
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
               first: bool = False, permissions: frozenset | None = None, expires_at: str | None = None,
               notice: str | None = None) -> None:
    """Store a new key for ``org`` (scoped to ``pod_id``, if given; with
    ``permissions``, None for every one, and ``expires_at``) and print its token on
    stdout, once, as the last line. ``first``: only if the database has no key yet
    (another server starting at the same moment may have made it). ``notice``: a
    line for stderr once the key is stored (a new organization started, say).

    The token is shown and the key stored, never one without the other:
    - The token is stdout's only line, written and flushed inside the transaction
      that stores the key, which commits only once that write succeeded. A stdout
      that cannot take it (closed, full, a pipe whose reader left) rolls the key back:
      "nothing was stored", and nothing on stdout claimed otherwise.
    - Only after the commit does stderr say "Created API key ID ..." (the log, when
      serving): nothing announces a key that is not stored. A reader that keeps only
      the first line (``| head -1``) keeps the token itself.
    - Should the commit fail after the token was written (a full disk), the error
      says that the token printed is void.
    """
    require_stdout()
    token = new_token()

    written = []  # the token, once on stdout

    def show(key) -> None:
        try:
            click.echo(token)
            sys.stdout.flush()
        except (OSError, ValueError) as e:  # ValueError: written to a closed file
            raise _StdoutUnwritable(getattr(e, "strerror", None) or str(e)) from None
        written.append(key)

    try:
        stored = storage.insert_api_key(org, hash_key(token), token_prefix(token), name, pod_id,
                                        stored_permissions(permissions), expires_at, before_commit=show,
                                        only_if_first=first)
    except driver_errors() as e:
        if not written:
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
    if stored is None:  # first: another server made the first key meanwhile; nothing was shown
        return
    scope = f'pod {pod_id} of organization "{shown(org)}"' if pod_id else f'organization "{shown(org)}"'
    if first:  # serving: the log is stderr, one entry a line
        logging.getLogger("pods.cli").info(
            "created API key %s for %s; its token, printed on stdout, is shown only once", stored["key_id"], scope)
        return
    grants = "every permission" if permissions is None else (
        "permissions " + (", ".join(p for p in PERMISSIONS if p in permissions) or "none"))
    until = f"expires {expires_at}" if expires_at else "no expiry"
    with contextlib.suppress(OSError, ValueError):  # stored and shown already: the notes are a courtesy
        if notice is not None:
            click.echo(notice, err=True)
        click.echo(f"Created API key {stored['key_id']} for {scope} ({grants}; {until}). "
                   f"Its token, on stdout, is shown only once.", err=True)


def _discard_stdout() -> None:
    """Point a stdout that failed at /dev/null, so that the interpreter's last flush
    of what is still buffered (the unstored token) fails nowhere and prints nothing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
