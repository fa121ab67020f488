"""Bearer-token authentication: each API key belongs to exactly one organization.

One key lookup per request answers who is asking (401 when nobody valid) and,
through flask-httpauth's roles, whether the key has the permission the endpoint
names (``@auth.login_required(role="pod_read")``; 403 when not). Scope is decided
in ``access.py`` from the same lookup.
"""

import hashlib
import secrets

from flask import abort, current_app, g, request
from flask_httpauth import HTTPTokenAuth
from werkzeug.datastructures import Authorization

from .permissions import Caller, missing_permission_message
from .accesslog import CALLER_ENVIRON_KEY
from .application import get_storage
from .errors import error_response
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


@auth.verify_token
def verify_token(token: str) -> Caller | None:
    # The pod the path names, if any, is read in the same statement as the key
    # (api.visible_pod uses it): one round trip for a request on one pod.
    pod_id = request.view_args.get("pod_id") if request.view_args else None
    row = get_storage().caller_for_key_hash(hash_key(token), pod_id)
    if row is None:
        return None
    if pod_id is not None:
        g.path_pod = (pod_id, path_pod(row))
    caller = request.environ[CALLER_ENVIRON_KEY] = Caller.from_row(row)  # also for the access log
    current_app.extensions[KEY_USE].used(caller.key_id, caller.used_at)
    return caller


def current_caller() -> Caller:
    """The caller of a view behind ``auth.login_required``."""
    return auth.current_user()


@auth.error_handler
def auth_error(status: int):
    if status == 403:
        # Raised, not returned: flask-httpauth would add its WWW-Authenticate header,
        # which belongs to a 401 (who are you?), not to a 403 (not with this key).
        abort(403, description=missing_permission_message(g.missing_permission))
    # A (body, status) tuple: a bare Response would keep status 200.
    return error_response(status)


def visible_pod(caller: Caller, pod_id: str):
    """The pod, if it is the caller's to see.

    :raise 404: no such pod in the caller's organization, or outside its key's scope
        (answered alike: another pod's existence is not revealed).
    """
    if not caller.sees_pod(pod_id):
        abort(404, description="Pod not found.")
    read_id, pod = g.get("path_pod", (None, None))  # read with the caller's key (auth.verify_token)
    if read_id != pod_id:
        pod = get_storage().find_pod(caller.org_id, pod_id)
    if pod is None:
        abort(404, description="Pod not found.")
    return pod
