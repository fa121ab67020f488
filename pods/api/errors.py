"""One JSON error shape for every status: ``{name, message, code, fix[, errors]}``.

Every error the server gives is one of the situations in ``SITUATIONS``, written
once here: its status, the ``code`` programs branch on, the ``message`` for a
person and the ``fix``, the concrete next action that resolves it. A view names
the situation (``fail("missing_permission", permission="pod_delete")``); it never
words an error itself. A 400's fix is made from its ``errors``: it names each
field to correct and what that field accepts (``ACCEPTS``).
"""

import logging
from http import HTTPStatus
from typing import Any, NamedTuple, NoReturn

from flask import Flask, current_app, json, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from . import accesslog
from .application import STORAGE_EXTENSION as STORAGE

# The contract's name of each status's error.
NAMES = {
    400: "ValidationError",
    401: "UnauthorizedError",
    403: "ForbiddenError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "PayloadTooLargeError",
    414: "URITooLongError",
    415: "UnsupportedMediaTypeError",
    429: "RateLimitError",
    431: "RequestHeaderFieldsTooLargeError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
    505: "HttpVersionNotSupportedError",
}


class Situation(NamedTuple):
    status: int
    code: str
    message: str  # str.format()ted with the situation's parameters, as is the fix
    fix: str


NEW_KEY = (
    "An operator makes one with `pods keys create --org ORG`; a key holding api_key_create can make one with"
    " POST /agent/v0/api-keys (a pod's: POST /agent/v0/pods/{{pod_id}}/api-keys)."
)

SITUATIONS = {
    # 400: the fix is made from the errors (validation_fix).
    "validation_error": Situation(400, "validation_error", "Invalid request.", ""),
    # 401: who is asking. The three say nothing about which key was tried, if any.
    "missing_authorization": Situation(
        401, "missing_authorization", "An Authorization header is required.",
        "Send the header `Authorization: Bearer <API key>` with every request. " + NEW_KEY,
    ),
    "unknown_api_key": Situation(
        401, "unknown_api_key", "A valid API key is required.",
        "The bearer token is not a live API key (unknown, deleted or expired): send the whole token exactly as"
        " it was shown when its key was made, or use another key. " + NEW_KEY,
    ),
    "unauthorized": Situation(
        401, "unauthorized", "The Authorization header must be `Bearer <API key>`.",
        "Send `Authorization: Bearer <API key>`: the word Bearer, one space, then the token exactly as shown"
        " when its key was made (no other scheme, no empty token).",
    ),
    # 403: what the key may do.
    "missing_permission": Situation(
        403, "missing_permission", "This API key does not have the {permission} permission.",
        "Use a key with the {permission} permission: one whose permissions object sets \"{permission}\": true,"
        " or has none (every permission). Ask for one from whoever gave you this key, or make one with a key"
        " that has {makers} (POST /agent/v0/api-keys).",
    ),
    "permission_escalation": Situation(
        403, "permission_escalation",
        "This API key cannot grant permissions it does not have itself: it lacks {permissions}.",
        "Leave {permissions} out of permissions (or set them to false), or make the request with a key"
        " that has them.",
    ),
    "expiry_escalation": Situation(
        403, "permission_escalation", "This API key expires at {expires_at}; it cannot grant a later expiry.",
        "Give an expires_at no later than {expires_at} (or leave it out: the new key then expires with this"
        " one), or make the key with a key that expires later or never.",
    ),
    "update_escalation": Situation(
        403, "permission_escalation",
        "This API key expires at {expires_at}, before the key it updates; it can remove permissions from it,"
        " not add them: it would add {permissions}.",
        "Leave {permissions} out of the new permissions (only removing is allowed), or make the change with a"
        " key that expires no earlier than the key it updates.",
    ),
    "forbidden": Situation(
        403, "forbidden", "This API key may not do that.",
        "Use a key whose scope and permissions allow this request (an organization key for actions on the"
        " whole organization).",
    ),
    "outside_scope": Situation(
        403, "forbidden", "This API key is scoped to pod {pod_id}; it cannot {action}.",
        "Use an organization key (one not scoped to a pod) to {action}; a pod-scoped key acts on its own pod"
        " only.",
    ),
    # 404: nothing there, or nothing the key may see (answered alike).
    "not_found": Situation(
        404, "not_found", "Not found.",
        "Check the method and path: every route is under /agent/v0 (GET /agent/v0/openapi.json lists them),"
        " spelled exactly, with no trailing slash.",
    ),
    "pod_not_found": Situation(
        404, "not_found", "Pod not found.",
        "Check the pod_id: GET /agent/v0/pods lists the pods this key can see. A pod of another organization,"
        " or outside this key's pod, is not found either.",
    ),
    "api_key_not_found": Situation(
        404, "not_found", "API key not found.",
        "Check the api_key_id: GET /agent/v0/api-keys (a pod's keys: GET /agent/v0/pods/{{pod_id}}/api-keys)"
        " lists the keys this key can see; a deleted or revoked key is not found.",
    ),
    "method_not_allowed": Situation(
        405, "method_not_allowed", "Method not allowed.",
        "Use one of the methods this answer's Allow header lists for this path.",
    ),
    "payload_too_large": Situation(
        413, "payload_too_large", "Request body is larger than 64 KiB.",
        "Send a body of at most 64 KiB (65,536 bytes): a pod or a key needs a few hundred bytes.",
    ),
    "uri_too_long": Situation(
        414, "uri_too_long", "The request target is longer than {limit}, the most the server reads.",
        "Shorten the path and query to well under {limit}: send page_token and ids exactly as the server"
        " issued them (each a few hundred bytes at most), and no other long parameter.",
    ),
    "unsupported_media_type": Situation(
        415, "unsupported_media_type", "Content-Type must be application/json, with no parameter but charset=utf-8.",
        "Send the body with the header `Content-Type: application/json` (charset=utf-8 is the only parameter"
        " allowed), or send no body.",
    ),
    "unsupported_content_encoding": Situation(
        415, "unsupported_media_type", "Content-Encoding is not supported: send the body as it is (identity).",
        "Send the body uncompressed, with no Content-Encoding header (or `Content-Encoding: identity`).",
    ),
    "rate_limit_exceeded": Situation(
        429, "rate_limit_exceeded", "Too many requests: the rate limit is exceeded.",
        "Wait as long as the Retry-After header says (in seconds; Retry-After-Ms in milliseconds), then send"
        " the request again; nothing was done. Spread requests out to stay under the limit.",
    ),
    "request_header_fields_too_large": Situation(
        431, "request_header_fields_too_large", "The request line and headers are larger than {limit} together.",
        "Send the request line and headers in under {limit} together: drop large or repeated headers"
        " (cookies, long custom headers).",
    ),
    "internal_error": Situation(
        500, "internal_error", "Internal server error.",
        "Retry once; if it fails again, report it to the server's operator with this answer's X-Request-Id"
        " header: the details are in the server's log.",
    ),
    "not_implemented": Situation(
        501, "not_implemented", "Not Implemented.",
        "Send the body with a Content-Length, or with `Transfer-Encoding: chunked` and no other transfer"
        " coding.",
    ),
    "service_unavailable": Situation(
        503, "service_unavailable", "Service unavailable; try again shortly.",
        "Retry after the number of seconds in the Retry-After header (a few seconds if there is none): the"
        " request was not carried out.",
    ),
    "database_unavailable": Situation(
        503, "service_unavailable", "Service unavailable; try again shortly.",
        "Retry in a few seconds: the database is not answering and nothing was changed. A create with a"
        " client_id is safe to retry.",
    ),
    "http_version_not_supported": Situation(
        505, "http_version_not_supported", "HTTP Version Not Supported.",
        "Send the request as HTTP/1.1 (or HTTP/1.0), in plain text.",
    ),
}

# The situation of an error known only by its status (werkzeug's, waitress's).
BY_STATUS = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "rate_limit_exceeded",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
    505: "http_version_not_supported",
}

# What each field or query parameter a 400 may name accepts, for the fix.
_TEXT = "a string of 1 to 255 characters with no control characters, or null (or left out)"
ACCEPTS = {
    "name": _TEXT,
    "client_id": _TEXT,
    "permissions": (
        "an object whose names are the SDK's ApiKeyPermissions (pod_read, pod_create, pod_delete,"
        " api_key_read, ...), each true, false or null; or null (or left out)"
    ),
    "expires_at": "an RFC 3339 time in the future with an offset, e.g. 2030-01-01T00:00:00Z; or null (or left out)",
    "public_key": "left out: this server issues bearer keys only",
    "limit": "an integer from 1 to 100 in plain digits, given once",
    "ascending": "true or false (any case) or 1 or 0, given once",
    "page_token": (
        "the next_page_token of the previous page of this same list, unchanged, given once, with no ascending"
        " that contradicts it (start again without it if in doubt)"
    ),
    "type": "bearer or public_key, given once",
    # The body as a whole, the HTTP request itself: the whole phrase.
    "_schema": "the body must be one JSON object in UTF-8, each name once",
    "_request": (
        "the request must be well-formed HTTP/1.1, e.g. `GET /agent/v0/pods HTTP/1.1`, with exactly one Host"
        " header, unfolded header lines, and a valid Content-Length or chunked body"
    ),
}
UNKNOWN_FIELD = "Unknown field."
# The most a fix names; the errors object names them all.
MAX_FIELDS_IN_FIX = 5


def validation_fix(errors: dict | None) -> str:
    """The fix of a 400: each field of ``errors`` with what it accepts."""
    parts: list[str] = []
    for field, messages in (errors or {}).items():
        if len(parts) == MAX_FIELDS_IN_FIX:
            parts.append("and the others that errors names")
            break
        if messages == [UNKNOWN_FIELD]:
            parts.append(f"remove {field} (not a field of this request)")
        elif field in ACCEPTS:
            accepts = ACCEPTS[field]
            parts.append(accepts if field.startswith("_") else f"{field} must be {accepts}")
        else:
            parts.append(f"correct {field} as its message in errors says")
    if not parts:
        return "Correct the request as the message says, then send it again."
    text = "; ".join(parts)
    return "Correct what errors names: " + text[0].lower() + text[1:] + "."


def _situation(which: int | str) -> Situation:
    """A situation by its name, or the default one of a status; a status the
    table does not know gets a name, code and fix made from its phrase."""
    if isinstance(which, str):
        return SITUATIONS[which]
    if which in BY_STATUS:
        return SITUATIONS[BY_STATUS[which]]
    phrase = HTTPStatus(which).phrase
    fix = (
        "Change the request as the message says, then send it again." if which < 500
        else "Retry in a few seconds; if it persists, report this answer's X-Request-Id to the server's operator."
    )
    return Situation(which, phrase.lower().replace(" ", "_").replace("-", "_"), phrase + ".", fix)


def name_of(status: int) -> str:
    if status in NAMES:
        return NAMES[status]
    return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "") + "Error"


# The limits some fixes name, filled in where the serving side knows them.
DEFAULT_PARAMS = {"limit": "32 KiB"}


def _derived(params: dict) -> dict:
    """Parameters some fixes word from others."""
    permission = params.get("permission")
    if permission is None:
        return {}
    # The keys that can make a key with the permission: they need it, and to make keys.
    return {"makers": permission if permission == "api_key_create" else f"{permission} and api_key_create"}


def error_body(which: int | str, message: str | None = None, errors: dict | None = None, **params) -> dict:
    """The error document of a situation (by name) or of a status's default one;
    ``params`` fill the situation's message and fix. ``message`` replaces the
    situation's own (for an error whose words come from elsewhere, e.g. werkzeug's)."""
    situation = _situation(which)
    values = {**DEFAULT_PARAMS, **params, **_derived(params)}
    body: dict[str, Any] = {
        "name": name_of(situation.status),
        "message": message or situation.message.format(**values),
        "code": situation.code,
        "fix": validation_fix(errors) if situation.status == 400 else situation.fix.format(**values),
    }
    if errors is not None:
        body["errors"] = errors
    return body


def status_of(which: int | str) -> int:
    return which if isinstance(which, int) else SITUATIONS[which].status


def error_json(which: int | str, message: str | None = None, errors: dict | None = None, **params) -> str:
    """The error as compact JSON text, for answers built outside Flask's view return."""
    return json.dumps(error_body(which, message, errors, **params), separators=(",", ":"))


def error_response(which: int | str, message: str | None = None, errors: dict | None = None,
                   headers: dict | None = None, **params):
    """A (body, status, headers) tuple that Flask turns into a JSON response, e.g.
    ``error_response("rate_limit_exceeded", headers={"Retry-After": "2"})`` or
    ``error_response(429, headers=...)``."""
    return error_body(which, message, errors, **params), status_of(which), headers or {}


class ApiFailure(HTTPException):
    """An error answer, raised by a view: ``fail(situation, **params)``."""

    def __init__(self, situation: str, **params):
        self.situation = situation
        self.params = params
        self.code = SITUATIONS[situation].status
        super().__init__(description=SITUATIONS[situation].message.format(**{**DEFAULT_PARAMS, **params}))


def fail(situation: str, **params) -> NoReturn:
    """Answer the request with the error of ``situation``."""
    raise ApiFailure(situation, **params)


def _http_error(e: HTTPException):
    # Start from werkzeug's response so headers such as Allow (405) survive.
    response = e.get_response()
    if isinstance(e, ApiFailure):
        body = error_body(e.situation, **e.params)
    else:
        # werkzeug's stock HTML-ish prose is replaced by the contract's short default.
        message = e.description if e.description != type(e).description else None
        body = error_body(response.status_code, message)
    response.set_data(json.dumps(body, separators=(",", ":")))
    response.content_type = "application/json"
    return response


def _validation_error(e: ValidationError):
    messages = e.messages if isinstance(e.messages, dict) else {"_schema": e.messages}
    return error_response(400, errors={field: _flat(found) for field, found in messages.items()})


def _flat(messages) -> list[str]:
    """A field's messages as one list of strings: marshmallow reports a nested
    object's (the permissions) as a dict, e.g. {"colour": ["Unknown field."]},
    which becomes ["colour: Unknown field."]."""
    if isinstance(messages, dict):
        return [f"{key}: {message}" for key, inner in messages.items() for message in _flat(inner)]
    return list(messages)


def _database_unavailable(e: Exception):
    # Locked beyond the busy timeout, disk full, read-only or vanished file, server
    # gone: the request changed nothing (its transaction rolled back) and may be
    # retried. /healthz says 503 too until the database takes writes again.
    logging.getLogger("pods.db").warning("database unavailable: %s", e)
    current_app.extensions[STORAGE].write_failed = True
    return error_response("database_unavailable")


def _log_unhandled(exc_info) -> None:
    """Flask's log_exception, made safe: Flask's names the request by its path as
    sent, unescaped, so a newline in the path would forge a log line. This names it
    by its escaped method and path and its request id; the traceback follows,
    indented (logstream.LogFormatter)."""
    environ = request.environ
    logging.getLogger("pods.app").error(
        "unhandled exception in %s %s request_id=%s",
        accesslog.field(environ.get("REQUEST_METHOD", ""), accesslog.MAX_METHOD),
        accesslog.field(environ.get("PATH_INFO", ""), accesslog.MAX_PATH),
        environ.get(accesslog.REQUEST_ID_ENVIRON_KEY, "-"),
        exc_info=exc_info,
    )


def register(app: Flask, unavailable: tuple) -> None:
    """JSON errors for ``app``; ``unavailable``: the storage's exceptions that mean
    the database is not answering (503)."""
    # No handler for Exception: Flask then logs an unhandled error (with the
    # method below, set on this app) and passes an InternalServerError to the
    # HTTPException handler, so 500s are JSON and logged.
    app.log_exception = _log_unhandled  # type: ignore[method-assign]  # this app's own, as Flask allows
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ValidationError, _validation_error)
    for exception in unavailable:
        app.register_error_handler(exception, _database_unavailable)
