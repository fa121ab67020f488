"""A storage that reports how long each operation took and why one failed, to
whoever counts it (the serving layer's metrics), without knowing who that is.

``instrument`` wraps, on one storage object, the operations a server runs while
serving (OPERATIONS): each call reports ``on_operation(name, seconds)``, and a
database error escaping it ``on_error(kind)`` with the backend's own reading of
it (``error_kind``: locked, unavailable, timeout, other) before it goes on to the
caller as before. Time is the operation's: its statements, and its waits for
SQLite's write lock or a pool connection, which are where a slow database shows.

Only a serving process with metrics on is instrumented; otherwise nothing here
runs. The wrappers are set on the instance, so the storage stays the same object
(attributes set on it, such as ``write_failed``, are its own).
"""

import functools
import time

# The operations a serving process runs: the values of the ``operation`` label.
OPERATIONS = (
    "caller_for_key_hash", "ping", "setting",
    "insert_pod", "find_pod", "page_pods", "delete_pod",
    "insert_api_key", "find_key", "page_keys", "update_key", "delete_key", "record_key_use",
)
# What ``error_kind`` may answer: the values of the ``kind`` label.
ERROR_KINDS = ("locked", "unavailable", "timeout", "other")


def instrument(storage, on_operation, on_error) -> None:
    """Report every OPERATIONS call on ``storage`` (see the module's docstring)."""
    for name in OPERATIONS:
        setattr(storage, name, _timed(storage, name, getattr(storage, name), on_operation, on_error))


def _timed(storage, name, method, on_operation, on_error):
    perf_counter = time.perf_counter

    @functools.wraps(method)
    def timed(*args, **kwargs):
        started = perf_counter()
        try:
            return method(*args, **kwargs)
        except Exception as e:
            kind = storage.error_kind(e)
            if kind is not None:
                on_error(kind)
            raise
        finally:
            on_operation(name, perf_counter() - started)

    return timed
