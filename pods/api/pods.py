"""The pod endpoints: one blueprint, mounted at /agent/v0."""

from flask import Blueprint, abort

from .permissions import require_organization_scope
from .application import empty_ok, get_storage
from .auth import auth, current_caller, visible_pod
from .bodies import json_body
from .pagetokens import ORGANIZATION_PODS
from .paging import keyset_page
from .schemas import list_args_schema, pod_create_schema, pod_list_schema, pod_schema

bp = Blueprint("pods", __name__, url_prefix="/agent/v0")


@bp.get("/pods")
@auth.login_required(role="pod_read")
def list_pods():
    caller = current_caller()
    # A pod-scoped key's list holds its pod at most.
    list_id = ORGANIZATION_PODS if caller.pod_id is None else f"pods:{caller.pod_id}"

    def fetch(args, limit):
        return get_storage().page_pods(caller.org_id, args["ascending"], args["after"], limit, caller.pod_id)

    page, pods = keyset_page(caller, list_id, list_args_schema, fetch, "pod_id")
    return pod_list_schema.dump({**page, "pods": pods})


@bp.post("/pods")
@auth.login_required(role="pod_create")
def create_pod():
    caller = current_caller()
    require_organization_scope(caller, "create pods")
    fields = pod_create_schema.load(json_body())
    return pod_schema.dump(get_storage().insert_pod(caller.org_id, **fields))


# <pod_id> is werkzeug's default converter: one path segment of anything but "/"
# (newlines, NUL and invalid UTF-8 included), so every such request is authenticated
# and answered by the lookup. A longer path is no route: 404 before authentication.
@bp.get("/pods/<pod_id>")
@auth.login_required(role="pod_read")
def get_pod(pod_id):
    return pod_schema.dump(visible_pod(current_caller(), pod_id))


@bp.delete("/pods/<pod_id>")
@auth.login_required(role="pod_delete")
def delete_pod(pod_id):
    caller = current_caller()
    if not caller.sees_pod(pod_id) or not get_storage().delete_pod(caller.org_id, pod_id):
        abort(404, description="Pod not found.")
    return empty_ok()

