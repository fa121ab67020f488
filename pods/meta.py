"""Routes about the service rather than pods: health and the API description."""

import sqlite3

from flask import Blueprint, current_app

from . import openapi, queries
from .db import close_thread_connection, get_db
from .errors import error_response

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz():
    try:
        queries.ping(get_db())
    except sqlite3.Error:
        # Reconnect on the next call: the file may have been replaced or repaired.
        close_thread_connection(current_app.config["DB"])
        return error_response(503, "Database is not answering.")
    return {"status": "ok"}


@bp.get("/agent/v0/openapi.json")
def openapi_document():
    return openapi.document()
