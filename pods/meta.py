"""Routes about the service rather than pods: health and the API description."""

import sqlite3

from flask import Blueprint

from . import openapi, queries
from .db import get_db
from .errors import error_response

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz():
    try:
        queries.ping(get_db())
    except sqlite3.Error:
        return error_response(503, "Database is not answering.")
    return {"status": "ok"}


@bp.get("/agent/v0/openapi.json")
def openapi_document():
    return openapi.document()
