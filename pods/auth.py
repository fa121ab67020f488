"""Bearer-token authentication: each API key belongs to exactly one organization."""

import hashlib
import secrets

from flask import request
from flask_httpauth import HTTPTokenAuth
from werkzeug.datastructures import Authorization

from .accesslog import CALLER_ENVIRON_KEY
from .errors import error_response
from .storage import get_storage

TOKEN_PREFIX = "pods_"


def new_token() -> str:
    """A fresh API key: 256 random bits, prefixed so secret scanners can spot it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


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


auth = ExactBearerAuth(scheme="Bearer")


@auth.verify_token
def verify_token(token: str):
    caller = get_storage().caller_for_key_hash(hash_key(token))
    if caller is not None:
        request.environ[CALLER_ENVIRON_KEY] = caller  # for the access log
    return caller


@auth.error_handler
def auth_error(status: int):
    # A (body, status) tuple: a bare Response would keep status 200.
    return error_response(status)
