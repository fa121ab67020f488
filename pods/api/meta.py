"""Routes about the service rather than pods: health and the API description."""

from flask import Blueprint, current_app

from . import openapi
from .application import get_storage
from .errors import error_response

bp = Blueprint("meta", __name__)

# The paths answered without a key, never rate-limited (the serving layer reads this).
PUBLIC_PATHS = frozenset({"/healthz", "/agent/v0/openapi.json"})
# Serving with --replica puts here a function returning the replica's lag in seconds
# (how long the oldest write not yet on the replica has waited; 0 when none waits).
REPLICA_LAG_KEY = "pods.replica_lag"


@bp.get("/healthz")
def healthz():
    storage = get_storage()
    try:
        storage.ping()  # after a request found it unavailable, also whether it takes writes again
    except storage.unavailable:
        return error_response("database_unavailable", "Database is not answering.")
    replica_lag = current_app.extensions.get(REPLICA_LAG_KEY)
    if replica_lag is not None:  # the API serves whatever the replica does: still 200
        return {"status": "ok", "replica_lag_seconds": round(replica_lag(), 1)}
    return {"status": "ok"}


@bp.get("/agent/v0/openapi.json")
def openapi_document():
    return openapi.document()
