"""One page of a keyset-paged list, the same way for every list: the pods of an
organization, the keys of an organization or of a pod."""

from flask import current_app, request

from . import pagetokens
from .permissions import Caller
from .schemas import PageTokenContext


def keyset_page(caller: Caller, list_id: str, args_schema, fetch, id_column: str) -> tuple[dict, list]:
    """Load the query with ``args_schema`` (page tokens bound to the caller's
    organization and ``list_id``), fetch one row more than the limit with
    ``fetch(args, limit)`` (the extra row tells whether another page follows), and
    return ({"count", "limit", "next_page_token"?}, rows of the page)."""
    secret = current_app.config["PAGE_TOKEN_SECRET"]
    with PageTokenContext({"secret": secret, "org_id": caller.org_id, "list_id": list_id}):
        args = args_schema.load(request.args)
    limit = args["limit"]
    rows = fetch(args, limit + 1)
    page = {"count": min(len(rows), limit), "limit": limit}
    if len(rows) > limit:
        last = rows[limit - 1]
        page["next_page_token"] = pagetokens.encode(
            secret, caller.org_id, list_id, args["ascending"], last["created_at"], last[id_column]
        )
    return page, rows[:limit]
