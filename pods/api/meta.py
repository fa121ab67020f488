"""Routes about the service rather than pods: health and the API description."""

from flask import Blueprint

from . import openapi
from .application import get_storage
from .errors import error_response

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz():
    storage = get_storage()
    try:
        storage.ping()  # after a request found it unavailable, also whether it takes writes again
    except storage.unavailable:
        return error_response(503, "Database is not answering.")
    return {"status": "ok"}


@bp.get("/agent/v0/openapi.json")
def openapi_document():
    return openapi.document()
