"""The API-key endpoints: keys of the caller's organization at /agent/v0/api-keys,
and keys scoped to one pod at /agent/v0/pods/<pod_id>/api-keys.

Checks run in the contract's order: who is asking (401), the endpoint's
permission (403), scope (404: a pod or key the caller may not see answers as if
it did not exist), the body (413, 415, 400), then no escalation (403).
"""

from flask import Blueprint, make_response, request

from .permissions import Caller, check_grant, check_regrant, require_organization_scope, stored_permissions
from .application import empty_ok, get_storage
from .auth import CREATED_KEY_ENVIRON_KEY, auth, current_caller, hash_key, new_token, token_prefix, visible_pod
from .bodies import json_body
from .errors import fail
from .paging import keyset_page
from .schemas import (
    api_key_create_schema,
    api_key_created_schema,
    api_key_list_args_schema,
    api_key_list_schema,
    api_key_schema,
    api_key_update_schema,
)

bp = Blueprint("keys", __name__, url_prefix="/agent/v0")


@bp.get("/api-keys")
@auth.login_required(role="api_key_read")
def list_keys():
    caller = current_caller()
    return _list(caller, caller.pod_id)  # a pod-scoped key sees its pod's keys only


@bp.post("/api-keys")
@auth.login_required(role="api_key_create")
def create_key():
    caller = current_caller()
    require_organization_scope(caller, "create organization keys")
    return _create(caller, pod_id=None)


@bp.get("/api-keys/<api_key_id>")
@auth.login_required(role="api_key_read")
def get_key(api_key_id):
    return api_key_schema.dump(_visible_key(current_caller(), api_key_id))


@bp.patch("/api-keys/<api_key_id>")
@auth.login_required(role="api_key_update")
def update_key(api_key_id):
    caller = current_caller()
    return _update(caller, _visible_key(caller, api_key_id))


@bp.delete("/api-keys/<api_key_id>")
@auth.login_required(role="api_key_delete")
def delete_key(api_key_id):
    caller = current_caller()
    return _delete(caller, _visible_key(caller, api_key_id))


@bp.get("/pods/<pod_id>/api-keys")
@auth.login_required(role="api_key_read")
def list_pod_keys(pod_id):
    caller = current_caller()
    visible_pod(caller, pod_id)
    return _list(caller, pod_id)


@bp.post("/pods/<pod_id>/api-keys")
@auth.login_required(role="api_key_create")
def create_pod_key(pod_id):
    caller = current_caller()
    visible_pod(caller, pod_id)
    return _create(caller, pod_id)


@bp.patch("/pods/<pod_id>/api-keys/<api_key_id>")
@auth.login_required(role="api_key_update")
def update_pod_key(pod_id, api_key_id):
    caller = current_caller()
    visible_pod(caller, pod_id)
    return _update(caller, _visible_key(caller, api_key_id, pod_id))


@bp.delete("/pods/<pod_id>/api-keys/<api_key_id>")
@auth.login_required(role="api_key_delete")
def delete_pod_key(pod_id, api_key_id):
    caller = current_caller()
    visible_pod(caller, pod_id)
    return _delete(caller, _visible_key(caller, api_key_id, pod_id))


def _visible_key(caller: Caller, key_id: str, pod_id: str | None = None):
    """The key, if it is the caller's to see (and, under a pod's route, that pod's).

    :raise 404: no such key in the caller's organization, deleted, or outside the
        caller's scope or the route's pod.
    """
    key = get_storage().find_key(caller.org_id, key_id)
    if key is None or not caller.sees_key(key) or (pod_id is not None and key["pod_id"] != pod_id):
        fail("api_key_not_found")
    return key


def _list(caller: Caller, pod_id: str | None):
    def fetch(args, limit):
        if args["type"] == "public_key":
            return []  # this server has bearer keys only
        return get_storage().page_keys(caller.org_id, pod_id, args["ascending"], args["after"], limit)

    list_id = f"api-keys:{pod_id or '*'}"
    page, keys = keyset_page(caller, list_id, api_key_list_args_schema, fetch, "key_id")
    return api_key_list_schema.dump({**page, "api_keys": keys})


def _create(caller: Caller, pod_id: str | None):
    fields = api_key_create_schema.load(json_body())
    permissions = fields["permissions"]
    if permissions is None:  # every permission only from a key that has every permission
        permissions = caller.default_grant()
    expires_at = fields["expires_at"] or caller.expires_at  # a new key lives no longer than its maker
    check_grant(caller, permissions, expires_at)
    token = new_token()
    key_hash = hash_key(token)
    try:
        key = get_storage().insert_api_key(
            caller.org_name, key_hash, token_prefix(token), fields["name"], pod_id,
            stored_permissions(permissions), expires_at,
        )
    except LookupError:  # the pod was deleted meanwhile
        fail("pod_not_found")
    request.environ[CREATED_KEY_ENVIRON_KEY] = (key_hash, caller.org_id, caller.org_name, key["key_id"])
    response = make_response(api_key_created_schema.dump({**key, "api_key": token}))
    # It carries the token: no cache (a proxy's, the client's) may keep a copy.
    response.headers["Cache-Control"] = "no-store"
    return response


def _update(caller: Caller, key):
    fields = api_key_update_schema.load(json_body())
    permissions = fields["permissions"]
    # Checked on the key as the update finds it: another client may have just changed its permissions.
    regrant_allowed = None if permissions is None else (lambda current: check_regrant(caller, current, permissions))
    updated = get_storage().update_key(
        caller.org_id, key["key_id"], fields["name"], stored_permissions(permissions), permissions is not None,
        check=regrant_allowed,
    )
    if updated is None:  # deleted meanwhile
        fail("api_key_not_found")
    return api_key_schema.dump(updated)


def _delete(caller: Caller, key):
    if not get_storage().delete_key(caller.org_id, key["key_id"]):
        fail("api_key_not_found")
    return empty_ok()
