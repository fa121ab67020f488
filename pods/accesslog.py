"""One log line per request, and a request id on every response.

    GET /agent/v0/pods 200 1.9ms request_id=4b1f... org=acme

The organization is the authenticated caller's ("-" when there is none); the
token never appears. Query strings are left out: they carry page tokens.
"""

import logging
import re
import time
import uuid

from flask import Flask, g, request

from .auth import auth

log = logging.getLogger("pods.access")

# An incoming X-Request-Id is honoured when it is short and plain enough to be
# logged and echoed safely; otherwise the server makes its own.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _start():
    g.request_started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def _finish(response):
    response.headers["X-Request-Id"] = g.request_id
    if log.isEnabledFor(logging.INFO):
        caller = auth.current_user()
        log.info(
            "%s %s %d %.1fms request_id=%s org=%s",
            request.method,
            request.path,
            response.status_code,
            (time.perf_counter() - g.request_started) * 1000,
            g.request_id,
            caller["org_name"] if caller else "-",
        )
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
