"""Bearer-token authentication: each API key belongs to exactly one organization.

One key lookup per request answers who is asking (401 when nobody valid) and,
through flask-httpauth's roles, whether the key has the permission the endpoint
names (``@auth.login_required(role="pod_read")``; 403 when not). Scope is decided
in ``access.py`` from the same lookup.
"""

import hashlib
import secrets

from flask import current_app, g, request
from flask.globals import request_ctx
from flask_httpauth import HTTPTokenAuth
from werkzeug.datastructures import Authorization

from .permissions import Caller
from .accesslog import CALLER_ENVIRON_KEY
from .application import STORAGE_EXTENSION as STORAGE, get_storage
from .errors import error_response, fail
from .keyuse import EXTENSION_KEY as KEY_USE
from ..storage.interface import path_pod

TOKEN_PREFIX = "pods_"


def new_token() -> str:
    """A fresh API key: 256 random bits, prefixed so secret scanners can spot it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_prefix(token: str) -> str:
    """The part of a token shown to recognise its key (``pods_`` and 7 more), never
    enough to use it."""
    return token[:12]


def hash_key(token: str) -> str:
    # Keys are long random strings, not passwords: a fast hash is enough and lets the
    # lookup be one indexed query per request.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, exactly as sent.

    Werkzeug's parser strips trailing blanks and splits tokens containing "=", so
    "<key> " would pass as "<key>". The contract compares the token exactly: only the
    spaces separating it from the scheme are dropped.
    """
    scheme, space, token = header.partition(" ")
    if not space or scheme.lower() != "bearer":
        return ""
    return token.lstrip(" ")


class ExactBearerAuth(HTTPTokenAuth):
    """flask-httpauth's bearer-token auth, given the token exactly as sent
    (``bearer_token``) instead of as werkzeug's Authorization parser reads it."""

    def get_auth(self):
        token = bearer_token(request.environ.get("HTTP_AUTHORIZATION", ""))
        return Authorization("bearer", token=token) if token else None

    def authorize(self, role, user, auth):
        """``role`` is the permission the endpoint needs (None: none)."""
        if role is None or role in user.permissions:
            return True
        g.missing_permission = role  # for the 403's message
        return False


auth = ExactBearerAuth(scheme="Bearer")


# The hash of the request's token, set by the serving layer, which hashed it to
# schedule the request (serving/admission.py): not hashed a second time.
TOKEN_HASH_ENVIRON_KEY = "pods.token_hash"


@auth.verify_token
def verify_token(token: str) -> Caller | None:
    # Each name of Flask's globals costs a lookup through its proxy: each taken once.
    asked, extensions = request_ctx.request, current_app.extensions
    environ, view_args = asked.environ, asked.view_args
    # The pod the path names, if any, is read in the same statement as the key
    # (api.visible_pod uses it): one round trip for a request on one pod.
    pod_id = view_args.get("pod_id") if view_args else None
    row = extensions[STORAGE].caller_for_key_hash(environ.get(TOKEN_HASH_ENVIRON_KEY) or hash_key(token), pod_id)
    if row is None:
        return None
    if pod_id is not None:
        g.path_pod = (pod_id, path_pod(row))
    caller = environ[CALLER_ENVIRON_KEY] = Caller.from_row(row)  # also for the access log
    extensions[KEY_USE].used(caller.key_id, caller.used_at)
    return caller


# (key_hash, org_id, org_name, key_id) of a key a request created: the serving layer
# knows whose its token is from its first request on, as the poll for new keys would
# tell it a moment later.
CREATED_KEY_ENVIRON_KEY = "pods.created_key"


def key_owner(app, key_hash: str) -> tuple | None:
    """(org_id, org_name, key_id) of the live key whose token hashes to ``key_hash``,
    or None. For the serving layer, which learns whose a token is before it reads a
    request's body (to schedule it, never to authorize it: the request itself is
    authenticated as every other)."""
    storage = app.extensions[STORAGE]
    try:
        row = storage.caller_for_key_hash(key_hash)
    finally:
        storage.end_request()
    return None if row is None else (row["org_id"], row["org_name"], row["key_id"])


def live_key_owners(app, limit: int) -> list:
    """(key_hash, org_id, org_name, key_id) of up to ``limit`` live keys, newest
    first: what the serving layer knows of tokens before it has seen them."""
    storage = app.extensions.get(STORAGE)
    if storage is None:  # an app without a database (bench/ceiling.py)
        return []
    try:
        return storage.live_key_owners(limit)
    finally:
        storage.end_thread()


def live_key_owners_since(app, mark):
    """``storage.live_key_owners_since``, from a thread of the serving layer's own,
    which keeps its connection from one look to the next, as a worker thread does
    from one request to the next."""
    storage = app.extensions.get(STORAGE)
    if storage is None:  # an app without a database (bench/ceiling.py)
        return [], None
    try:
        return storage.live_key_owners_since(mark)
    finally:
        storage.end_request()


def current_caller() -> Caller:
    """The caller of a view behind ``auth.login_required``."""
    return auth.current_user()


@auth.error_handler
def auth_error(status: int):
    if status == 403:
        # Raised, not returned: flask-httpauth would add its WWW-Authenticate header,
        # which belongs to a 401 (who are you?), not to a 403 (not with this key).
        fail("missing_permission", permission=g.missing_permission)
    # A (body, status) tuple: a bare Response would keep status 200.
    body, status, _ = error_response(unauthenticated_situation(request.environ.get("HTTP_AUTHORIZATION")))
    return body, status


def unauthenticated_situation(header: str | None) -> str:
    """Why a request has no caller, as far as it can be told without saying
    anything about keys: no header at all, a header that is no bearer token, or a
    token that is not a live key (unknown, deleted, expired or a near miss: one
    answer for all)."""
    if header is None:
        return "missing_authorization"
    if not bearer_token(header):
        return "unauthorized"
    return "unknown_api_key"


def visible_pod(caller: Caller, pod_id: str):
    """The pod, if it is the caller's to see.

    :raise 404: no such pod in the caller's organization, or outside its key's scope
        (answered alike: another pod's existence is not revealed).
    """
    if not caller.sees_pod(pod_id):
        fail("pod_not_found")
    read_id, pod = g.get("path_pod", (None, None))  # read with the caller's key (auth.verify_token)
    if read_id != pod_id:
        pod = get_storage().find_pod(caller.org_id, pod_id)
    if pod is None:
        fail("pod_not_found")
    return pod
