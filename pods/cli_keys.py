"""The ``keys`` and ``orgs`` commands: API keys and organizations from the shell."""

import difflib
import json
import re
from datetime import UTC, datetime, timedelta

import click

from .api.permissions import PERMISSIONS, permissions_from
from .cli_options import (
    command_line,
    db_option,
    db_path,
    existing_database,
    key_name,
    org_name,
)
from .serving.console import create_key, shown
from .storage import utc_text

# keys create --expires-at: RFC 3339's date-time, as the API takes expires_at
# (pods/api/schemas.py's RFC3339; not imported, which would load marshmallow for every command).
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")
# keys create --expires-in: a number and a unit.
DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@click.group()
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


@click.group()
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
