"""pods: a self-hosted server for the AgentMail Pods API."""

import secrets

from flask import Flask

from . import accesslog, errors, httprules, keyuse
from .leanflask import CompactJSONProvider, NoSessions
from .routing import StrictRoutingFlask
from .storage import EXTENSION_KEY, open_storage

# The one place the version is written: pyproject.toml reads it from here. Bumped
# with every change users can see; CHANGELOG.md's top entry names it.
__version__ = "0.2.0"


def create_app(config: dict | None = None) -> Flask:
    """Build the app and bring its database to the current schema.

    Config comes from defaults, then ``config``, and from nowhere else: the CLI
    resolves flags and their documented variables, so no other ``PODS_*``
    variable can change a limit, and no token lands in ``app.config``.
    """
    app = StrictRoutingFlask(__name__)
    app.json = CompactJSONProvider(app)
    app.session_interface = NoSessions()
    app.config.from_mapping(
        DB="pods.db",
        MAX_CONTENT_LENGTH=64 * 1024,
        KEY_USE_FLUSH_SECONDS=keyuse.FLUSH_SECONDS,
        THREADS=1,  # request threads per process (the serve flag --threads)
    )
    if config is not None:
        app.config.from_mapping(config)

    storage = app.extensions[EXTENSION_KEY] = open_storage(app.config["DB"], threads=app.config["THREADS"])
    storage.prepare()
    # Shared by every process on this database, so any worker accepts any token.
    app.config["PAGE_TOKEN_SECRET"] = storage.setting("page_token_secret", lambda: secrets.token_bytes(32))
    storage.end_thread()  # this thread serves no request: what it used goes back (a pool's connection)

    app.extensions[keyuse.EXTENSION_KEY] = keyuse.KeyUseRecorder(storage, app.config["KEY_USE_FLUSH_SECONDS"])
    app.teardown_appcontext(lambda _exc: storage.end_request())
    errors.register(app, storage.unavailable)
    app.wsgi_app = httprules.HttpRules(app.wsgi_app)
    app.wsgi_app = accesslog.AccessLog(app.wsgi_app, app.config.get("TRUSTED_PROXIES", ()))

    from . import api, keys, meta

    app.register_blueprint(api.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(meta.bp)
    return app


def close_app(app: Flask) -> None:
    """At shutdown: record the key uses still pending, release the database."""
    app.extensions[keyuse.EXTENSION_KEY].flush()
    app.extensions[EXTENSION_KEY].close()
