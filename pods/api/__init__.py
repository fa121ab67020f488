"""The Flask side of pods: the application, its blueprints, and the WSGI
middleware around it (HTTP rules, access log)."""

import secrets

from flask import Flask

from . import accesslog, errors, httprules, keyuse
from .application import STORAGE_EXTENSION, PodsFlask
from ..storage import observed, open_storage

def create_app(config: dict | None = None, observer=None) -> Flask:
    """Build the app and bring its database to the current schema.

    Config comes from defaults, then ``config``, and from nowhere else: the CLI
    resolves flags and their documented variables, so no other ``PODS_*``
    variable can change a limit, and no token lands in ``app.config``.

    ``observer``, if given, is told of every answer and every storage operation
    (metrics, pods/serving/metrics.py): ``observer.answer(method, route, status,
    seconds, caller)`` (``accesslog.AccessLog``), ``observer.db_operation(name,
    seconds)`` and ``observer.db_error(kind)`` (``storage.observed``).
    """
    app = PodsFlask("pods")
    app.config.from_mapping(
        DB="pods.db",
        MAX_CONTENT_LENGTH=64 * 1024,
        KEY_USE_FLUSH_SECONDS=keyuse.FLUSH_SECONDS,
        THREADS=1,  # request threads per process (the serve flag --threads)
        REPLICATED=False,  # Litestream replicates the SQLite file (the serve flag --replica)
    )
    if config is not None:
        app.config.from_mapping(config)

    storage = app.extensions[STORAGE_EXTENSION] = open_storage(app.config["DB"], threads=app.config["THREADS"],
                                                                replicated=app.config["REPLICATED"])
    storage.prepare()
    if observer is not None:
        observed.instrument(storage, observer.db_operation, observer.db_error)
    # Shared by every process on this database, so any worker accepts any token.
    app.config["PAGE_TOKEN_SECRET"] = storage.setting("page_token_secret", lambda: secrets.token_bytes(32))
    storage.end_thread()  # this thread serves no request: what it used goes back (a pool's connection)

    app.extensions[keyuse.EXTENSION_KEY] = keyuse.KeyUseRecorder(storage, app.config["KEY_USE_FLUSH_SECONDS"])
    app.teardown_appcontext(lambda _exc: storage.end_request())
    errors.register(app, storage.unavailable)
    # Middleware, wrapped as Flask's documentation does (to mypy, a method replaced).
    app.wsgi_app = httprules.HttpRules(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = accesslog.AccessLog(  # type: ignore[method-assign]
        app.wsgi_app, app.config.get("TRUSTED_PROXIES", ()), observe=None if observer is None else observer.answer
    )

    from . import keys, meta, pods

    app.register_blueprint(pods.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(meta.bp)
    return app


def close_app(app: Flask) -> None:
    """At shutdown: record the key uses still pending, release the database."""
    app.extensions[keyuse.EXTENSION_KEY].flush()
    app.extensions[STORAGE_EXTENSION].close()
