"""Where pods keeps its data: ``--db`` names a SQLite file (the default).

The views, authentication and the CLI use a ``Storage`` (``base.py``) and never a
database driver; each backend module holds every statement it runs.
"""

from flask import current_app

from .base import NotPodsDatabase, SchemaTooNew, Storage, UnusableDatabase, utc_now, utc_text

__all__ = [
    "NotPodsDatabase", "SchemaTooNew", "Storage", "UnusableDatabase",
    "get_storage", "open_storage", "utc_now", "utc_text",
]

EXTENSION_KEY = "pods.storage"


def open_storage(target: str) -> Storage:
    """The storage ``target`` names. Opens nothing yet: connections come on first use."""
    from .sqlite import SQLiteStorage

    return SQLiteStorage(target)


def get_storage() -> Storage:
    """The current app's storage."""
    return current_app.extensions[EXTENSION_KEY]
