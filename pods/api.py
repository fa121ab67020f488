"""The pod endpoints: one blueprint, mounted at /agent/v0."""

from flask import Blueprint, Response, abort, current_app, request

from . import pagetoken
from .auth import auth
from .jsonbody import json_body
from .storage import get_storage
from .schemas import (
    PageTokenContext,
    list_args_schema,
    pod_create_schema,
    pod_list_schema,
    pod_schema,
)

bp = Blueprint("pods", __name__, url_prefix="/agent/v0")


@bp.get("/pods")
@auth.login_required
def list_pods():
    org_id = auth.current_user()["org_id"]
    secret = current_app.config["PAGE_TOKEN_SECRET"]
    with PageTokenContext({"secret": secret, "org_id": org_id}):
        args = list_args_schema.load(request.args)
    limit, ascending = args["limit"], args["ascending"]
    # One row more than asked for tells whether another page follows.
    rows = get_storage().page_pods(org_id, ascending, args["after"], limit + 1)
    page = {"count": min(len(rows), limit), "limit": limit, "pods": rows[:limit]}
    if len(rows) > limit:
        last = rows[limit - 1]
        page["next_page_token"] = pagetoken.encode(
            secret, org_id, ascending, last["created_at"], last["pod_id"]
        )
    return pod_list_schema.dump(page)


@bp.post("/pods")
@auth.login_required
def create_pod():
    fields = pod_create_schema.load(json_body())
    pod = get_storage().insert_pod(auth.current_user()["org_id"], **fields)
    return pod_schema.dump(pod)


# <pod_id> is werkzeug's default converter: one path segment of anything but "/"
# (newlines, NUL and invalid UTF-8 included), so every such request is authenticated
# and answered by the lookup. A longer path is no route: 404 before authentication.
@bp.get("/pods/<pod_id>")
@auth.login_required
def get_pod(pod_id):
    pod = get_storage().find_pod(auth.current_user()["org_id"], pod_id)
    if pod is None:
        abort(404, description="Pod not found.")
    return pod_schema.dump(pod)


@bp.delete("/pods/<pod_id>")
@auth.login_required
def delete_pod(pod_id):
    if not get_storage().delete_pod(auth.current_user()["org_id"], pod_id):
        abort(404, description="Pod not found.")
    response = Response(status=200)
    del response.headers["Content-Type"]  # the body is empty, not an empty document
    return response
