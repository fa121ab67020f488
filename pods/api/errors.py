"""One JSON error shape for every status: ``{name, message, code[, errors]}``."""

import logging
from http import HTTPStatus

from flask import Flask, current_app, json, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from . import accesslog
from .application import STORAGE_EXTENSION as STORAGE

# status: (name, code, default message)
KNOWN = {
    400: ("ValidationError", "validation_error", "Invalid request."),
    401: ("UnauthorizedError", "unauthorized", "A valid API key is required."),
    403: ("ForbiddenError", "forbidden", "This API key may not do that."),
    404: ("NotFoundError", "not_found", "Not found."),
    405: ("MethodNotAllowedError", "method_not_allowed", "Method not allowed."),
    413: ("PayloadTooLargeError", "payload_too_large", "Request body is larger than 64 KiB."),
    415: ("UnsupportedMediaTypeError", "unsupported_media_type", "Request body must be application/json."),
    500: ("InternalServerError", "internal_server_error", "Internal server error."),
    503: ("ServiceUnavailableError", "service_unavailable", "Service unavailable; try again shortly."),
}


def error_body(status: int, message: str | None = None, errors: dict | None = None) -> dict:
    if status in KNOWN:
        name, code, default = KNOWN[status]
    else:  # a status the contract does not name, e.g. 431 from the HTTP layer
        phrase = HTTPStatus(status).phrase
        name = phrase.title().replace(" ", "").replace("-", "") + "Error"
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        default = phrase + "."
    body = {"name": name, "message": message or default, "code": code}
    if errors is not None:
        body["errors"] = errors
    return body


def error_json(status: int, message: str | None = None, errors: dict | None = None) -> str:
    """The error as compact JSON text, for answers built outside Flask's view return."""
    return json.dumps(error_body(status, message, errors), separators=(",", ":"))


def error_response(status: int, message: str | None = None, errors: dict | None = None):
    """A (body, status) tuple that Flask turns into a JSON response."""
    return error_body(status, message, errors), status


def _http_error(e: HTTPException):
    # Start from werkzeug's response so headers such as Allow (405) survive.
    response = e.get_response()
    # A view's own description ("Pod not found.") is kept; werkzeug's stock HTML-ish
    # prose is replaced by the contract's short default.
    message = e.description if e.description != type(e).description else None
    response.set_data(error_json(e.code, message))
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
    return error_response(503)


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
    app.log_exception = _log_unhandled
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ValidationError, _validation_error)
    for exception in unavailable:
        app.register_error_handler(exception, _database_unavailable)
