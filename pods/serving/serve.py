"""Serving, start to stop: listen, prepare the database (its first key), build the
app, serve until signalled with one process or several, and close the database."""

import contextlib
import dataclasses
import functools
import gc
import logging
import os
import sys

import click

from ..api import close_app, create_app, logstream
from ..api.auth import hash_key, token_prefix
from ..api.application import STORAGE_EXTENSION
from ..api.meta import REPLICA_LAG_KEY
from ..storage import UnusableDatabase, describe, is_url, open_storage
from ..storage.litestream import check_replica_url, find_litestream, hold_open
from . import ratelimit, server, shutdown, workers
from .channel import Deadlines
from .exporter import Exporter
from .console import DEFAULT_ORG, check_env_token, clear_failures, create_key, open_database, require_stdout, shown
from .replication import Replication

log = logging.getLogger("pods.server")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to serve, as the serve flags (and their variables) set it."""

    db: str
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 1
    workers: int = 1
    trusted_proxies: tuple = ()
    deadlines: Deadlines = Deadlines()
    connection_limit: int = server.CONNECTION_LIMIT
    limits: ratelimit.Limits = ratelimit.Limits()  # --rate-limit, --key-rate-limit and their bursts
    queue_timeout: float = server.QUEUE_TIMEOUT
    api_key: str | None = dataclasses.field(default=None, repr=False)  # PODS_API_KEY: never printed
    replicas: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # --replica URLs: may hold a secret
    metrics_port: int | None = None  # None: no metrics
    metrics_host: str = "127.0.0.1"
    metrics_by_org: bool = False

    def app_config(self) -> dict:
        return {"DB": self.db, "THREADS": self.threads, "TRUSTED_PROXIES": self.trusted_proxies,
                "REPLICATED": bool(self.replicas)}


def configure_logging(level: str) -> None:
    """Every log line to stderr, through the log stream (never blocking)."""
    root = logging.getLogger()
    root.handlers[:] = [logstream.LogStreamHandler(logstream.stderr)]
    root.setLevel(level.upper())


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT; exit status 1 if a worker failed."""
    if settings.workers > 1:
        logstream.name_worker(0)  # the parent; each worker names itself 1..N in _serve_worker
    check_env_token(settings.api_key)
    litestream = _litestream_for(settings)  # refused in one line before anything is done
    settings = dataclasses.replace(settings, connection_limit=_fit_connection_limit(settings.connection_limit))
    # The ports first: a server refused there must not have made a database and shown its first key.
    sockets = _listen(settings.host, settings.port, settings.workers)
    # Replicating, the database is held open until Litestream has it open too (``hold_open``).
    keeper = hold_open(settings.db) if litestream else None
    replication = None
    exporter = _metrics_listener(settings)
    metrics = exporter.server_metrics() if exporter is not None and settings.workers == 1 else None
    try:
        _prepare_database(settings.db, settings.api_key)
        with clear_failures(settings.db):
            # One process builds its app now, so a failure shows before "serving on";
            # worker processes build their own after the fork (SQLite connections
            # must not cross one).
            app = create_app(settings.app_config(), observer=metrics) if settings.workers == 1 else None
        if litestream:
            # Before the workers fork: they share its lag (an anonymous shared mapping).
            replication = Replication(settings.db, settings.replicas[0], litestream)
            replication.start()
    finally:
        if keeper is not None:
            keeper.close()
    lag = replication.lag.seconds if replication else None
    if app is not None and lag:
        app.extensions[REPLICA_LAG_KEY] = lag
    if exporter is not None and lag:
        exporter.watch_replica(lag)

    url_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    serving = (f"pods serving on http://{url_host}:{sockets[0].getsockname()[1]}"
               f" (database {describe(settings.db)}, {settings.workers} worker(s),"
               f" {settings.threads} thread(s) each)")
    _say(serving)
    if exporter is not None:
        _say(f"pods metrics on {exporter.url}")
    # Made before the workers are forked: they share it, so a limit holds for the whole server.
    buckets = ratelimit.SharedBuckets() if settings.limits else None
    try:
        if app is not None:
            if exporter is not None:
                assert metrics is not None  # one process: it records for the exporter
                metrics.watch_storage(app.extensions[STORAGE_EXTENSION])
                exporter.start()

            def on_exit():
                if exporter is not None:
                    exporter.stop()  # no scrape reading the database as it is closed
                _close_database(app, replication)

            _serve_app(app, sockets[0], settings, buckets, on_exit=on_exit, metrics=metrics)
            return
        code = workers.run_workers(
            [functools.partial(_serve_worker, settings, sock, number, lag, buckets, exporter)
             for number, sock in enumerate(sockets, start=1)],
            on_forked=None if exporter is None else exporter.workers_forked,
            on_exit=None if exporter is None else exporter.worker_exited,
        )
        for sock in sockets:
            sock.close()
        if exporter is not None:
            exporter.stop()
        if replication is not None:
            replication.stop()  # every worker is gone: the last write is made
        else:
            # Once, after every worker is gone: a worker checkpointing while its siblings
            # still serve would find the WAL in use.
            with clear_failures(settings.db):
                open_storage(settings.db).checkpoint()
    finally:
        if exporter is not None:
            exporter.stop()
        if replication is not None:
            replication.stop()  # also when serving failed: Litestream never outlives the server
    if code:
        sys.exit(code)


def _litestream_for(settings: Settings) -> str | None:
    """The Litestream binary to replicate with, or None without --replica; a
    replica pods cannot stream to is refused in one line."""
    if not settings.replicas:
        return None
    if is_url(settings.db):
        raise click.ClickException(
            "--replica streams a SQLite database; PostgreSQL replicates itself (streaming replication, "
            "pg_basebackup): serve without --replica"
        )
    for url in settings.replicas:
        try:
            check_replica_url(url)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    if len(settings.replicas) > 1:
        raise click.ClickException(
            f"--replica given {len(settings.replicas)} times: Litestream 0.5 streams a database to one replica; "
            "name one, and copy that replica for a second copy (docs/replication.md)"
        )
    try:
        return find_litestream()
    except UnusableDatabase as e:
        raise click.ClickException(str(e)) from None



def _listen(host: str, port: int, count: int):
    """The listening sockets, one per worker, sharing the port; one server per
    address and port, whatever --workers says (``workers.listening_sockets``)."""
    try:
        return workers.listening_sockets(host, port, count)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None


def _say(line: str) -> None:
    try:
        click.echo(line)
    except OSError:  # stdout unwritable (/dev/full, a closed pipe): say it where it can be seen
        log.warning("%s; stdout could not be written", line)


def _metrics_listener(settings: Settings) -> Exporter | None:
    """The metrics listener (--metrics-port), bound now, or None when metrics are off."""
    if settings.metrics_port is None:
        return None
    if not settings.metrics_host.strip():  # an unset shell variable, say: bind() would take every interface
        raise click.ClickException("--metrics-host is empty: name the interface for the metrics "
                                   "(127.0.0.1 by default; 0.0.0.0 for every one)")
    if settings.metrics_host in ("0.0.0.0", "::"):
        log.warning("metrics listener on every interface (%s): whoever reaches its port reads them; "
                    "firewall it or bind a private address", settings.metrics_host)
    try:
        return Exporter(settings.metrics_host, settings.metrics_port, settings.db, settings.workers,
                        settings.metrics_by_org)
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {settings.metrics_host}:{settings.metrics_port} for metrics: {e.strerror or e}"
        ) from None


def _fit_connection_limit(wanted: int) -> int:
    fits = workers.raise_open_file_limit(wanted)
    if fits < wanted:
        log.warning("connection limit lowered from %d to %d: the open-file limit (ulimit -n) allows no more",
                    wanted, fits)
    return fits


def _prepare_database(db: str, env_token: str | None) -> None:
    """The database made or brought to the current schema, with its first key.

    A first start that cannot show its first key leaves no database behind (``init``
    could not make one after it): with stdout closed it makes none; when the token
    could not be written, the file it has just made is removed again."""
    new = not is_url(db) and not os.path.lexists(db)
    if new and not env_token:
        require_stdout()
    with open_database(db) as storage:
        try:
            bootstrap_key(storage, env_token)
        except BaseException:
            if new:
                _discard_unused(storage)
            raise


def _discard_unused(storage) -> None:
    """Remove a database made by this start, if it still holds no key and no pod."""
    with contextlib.suppress(Exception):  # unsure what it holds: leave it
        if storage.count_api_keys() == 0 and storage.count_pods() == 0:
            storage.discard_new()


def _serve_worker(settings: Settings, sock, number: int, replica_lag=None, buckets=None,
                  exporter: Exporter | None = None) -> None:
    logstream.name_worker(number)  # every log line of this process ends with worker=NUMBER
    metrics = None
    if exporter is not None:
        exporter.close_in_worker()
        metrics = exporter.server_metrics()
    try:
        with clear_failures(settings.db):
            app = create_app(settings.app_config(), observer=metrics)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    if replica_lag is not None:
        app.extensions[REPLICA_LAG_KEY] = replica_lag
    if metrics is not None:
        metrics.watch_storage(app.extensions[STORAGE_EXTENSION])

    def on_exit():
        close_app(app)
        if metrics is not None:
            metrics.fold()  # this worker's last figures (key uses recorded at close included)

    _serve_app(app, sock, settings, buckets, on_exit=on_exit, metrics=metrics)


def _serve_app(app, sock, settings: Settings, buckets, on_exit, metrics=None) -> None:
    waitress_server = server.make_server(
        app, sock, settings.threads, settings.deadlines, settings.connection_limit, settings.trusted_proxies,
        settings.limits, buckets, settings.queue_timeout, metrics,
    )
    stop_watching = waitress_server.admission.watch_new_keys()

    def stop_then_exit():
        stop_watching()  # no look for new keys as the database is closed
        on_exit()

    shutdown.run_until_signalled(waitress_server, on_exit=stop_then_exit)


def _close_database(app, replication=None) -> None:
    close_app(app)
    if replication is not None:
        # Connections of finished request threads that nobody closed (a connection and
        # its statement cache hold each other) are closed now, while Litestream still
        # has the database open: one closed later, the last, would checkpoint and delete
        # the WAL, and Litestream would start the replica over with a full snapshot.
        gc.collect()
        # The last request is answered: Litestream sends the last writes, then stops.
        # No checkpoint after it (see replication.py): the WAL stays, part of the database.
        replication.stop()
    else:
        app.extensions[STORAGE_EXTENSION].checkpoint()


def bootstrap_key(storage, env_token: str | None) -> None:
    """Make PODS_API_KEY a key of "default", or give a new database its first key."""
    if env_token:
        key_hash = hash_key(env_token)
        storage.insert_api_key(DEFAULT_ORG, key_hash, token_prefix(env_token))  # unless stored already
        caller = storage.caller_for_key_hash(key_hash)
        if caller is None:
            click.echo("warning: PODS_API_KEY is a revoked key; it will not authenticate", err=True)
        elif caller["org_name"] != DEFAULT_ORG or caller["pod_id"] is not None:
            scope = f"pod {caller['pod_id']} of " if caller["pod_id"] is not None else ""
            click.echo(f'warning: PODS_API_KEY is already a key of {scope}organization "{shown(caller["org_name"])}",'
                       f' not of "{DEFAULT_ORG}"; it stays as it is', err=True)
    elif storage.count_api_keys() == 0:
        create_key(storage, DEFAULT_ORG, first=True)
