"""The listener that serves the metrics (``--metrics-port``), and what a scrape
reads itself: the counts of organizations, keys and pods, the build, the
processes, the replica's lag. One process: a thread of it, over its registry. Several (``--workers``):
a thread of the parent, which serves no request, summing the workers' files in a
private directory (prometheus_client's multiprocess mode); a worker that is gone
is marked dead, so one started again under a new pid neither resets nor doubles
what was counted. The series themselves, and who records them: ``metrics.py``."""

import logging
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, disable_created_metrics, make_wsgi_app
from prometheus_client import multiprocess
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from .. import __version__
from ..storage import OperatorStorage, is_url, open_storage
from .metrics import ServerMetrics

log = logging.getLogger("pods.metrics")

# A count of rows that took less than this (seconds) is taken again at every scrape;
# a slower one at most every RECOUNT_FACTOR times as long as it took (1% of the time).
ALWAYS_RECOUNT_UNDER = 0.05
RECOUNT_FACTOR = 100
SCRAPE_TIMEOUT = 10  # seconds a scrape may take, from connecting to its answer sent (Prometheus's default)
MAX_SCRAPERS = 8  # connections to the metrics listener at once; more are closed as they come
MIN_SCRAPE_INTERVAL = 0.1  # seconds between two scrapes' answers, however many clients ask
COUNT_WAIT = 2.0  # seconds a scrape waits for the counts of rows; past it, they are left out
MAX_COUNT_REUSE = 60.0  # seconds a slow count is reused, at most
METRICS_PATH = "/metrics"


class _BuildInfo:
    def __init__(self, db: str):
        self.labels = [__version__, "postgresql" if is_url(db) else "sqlite", str(_target_version(db))]

    def collect(self):
        info = GaugeMetricFamily("pods_build_info", "Always 1: this server's version, database backend and the"
                                 " schema version it keeps the database at.",
                                 labels=["version", "backend", "schema_version"])
        info.add_metric(self.labels, 1)
        yield info


def _target_version(db: str) -> int:
    return open_storage(db, read_only=True).target_version  # a class attribute: nothing opened


COUNTED = {  # row_counts() name: (series, help)
    "organizations": ("pods_organizations", "Organizations in the database."),
    "api_keys": ("pods_api_keys", "API keys that authenticate (not revoked or deleted), in every organization."),
    "pods": ("pods_pods", "Pods in the database, in every organization."),
}


class _Counts:
    """Organizations, keys and pods, read from the database at scrape time through a
    read-only connection of the counter's own (never a request thread's).

    Exact on SQLite and on PostgreSQL tables under 100,000 rows; estimated by
    PostgreSQL's planner above that (``row_counts``). A count is taken by a thread
    of its own, which a scrape waits for COUNT_WAIT at most: a database that stalls
    or stops answering (a hung PostgreSQL) never holds a scrape, whose counts are
    then left out, as while the database fails (``pods_db_errors_total`` of the
    serving processes says why). A count that cost less than ALWAYS_RECOUNT_UNDER of
    CPU is taken again at every scrape; a costlier one (SQLite with millions of
    rows) is reused for RECOUNT_FACTOR times its cost, at most MAX_COUNT_REUSE
    seconds, so counting takes about 1% of a core at most. Its cost is the
    counter's CPU time, not the time it waited (for a lock, the database, the
    interpreter): a stall does not make a count look costly and stale for long."""

    def __init__(self, db: str):
        self.db = db
        self.storage: OperatorStorage | None = None
        self.lock = threading.Lock()
        self.values: dict[str, int] | None = None
        self.taken = self.cost = 0.0
        self.failing = False
        self.counting: threading.Thread | None = None

    def collect(self):
        values = self.read()
        for name, (series, text) in COUNTED.items():
            if values is not None:
                yield GaugeMetricFamily(series, text, value=values[name])

    def read(self) -> dict | None:
        with self.lock:
            now = time.monotonic()
            reusable = self.values is not None and self.cost >= ALWAYS_RECOUNT_UNDER \
                and now - self.taken < min(RECOUNT_FACTOR * self.cost, MAX_COUNT_REUSE)
            if not reusable and self.counting is None:
                self.counting = threading.Thread(target=self._count, name="pods-metrics-count", daemon=True)
                self.counting.start()
            counting = self.counting
        if counting is not None:
            counting.join(COUNT_WAIT)
            if counting.is_alive():
                return None  # the database is not answering in time: no figures rather than a late scrape
        with self.lock:
            return self.values  # None while the database fails

    def _count(self) -> None:
        started = time.thread_time()
        try:
            fresh = self.storage is None
            if self.storage is None:
                self.storage = open_storage(self.db, read_only=True)
            if fresh:  # connecting is not a count's cost
                started = time.thread_time()
            values = self.storage.row_counts()
        except Exception as e:  # the database is away: no figures rather than no scrape
            if not self.failing:
                log.warning("metrics: cannot count rows: %s", " ".join(str(e).split()))
            with self.lock:
                self.failing, self.values = True, None
            self._close_storage()
        else:
            with self.lock:
                self.failing = False
                self.values, self.taken, self.cost = values, time.monotonic(), time.thread_time() - started
        finally:
            if self.storage is not None:
                self.storage.end_thread()  # SQLite: this thread's connection; the thread ends
            with self.lock:
                self.counting = None

    def _close_storage(self) -> None:
        if self.storage is not None:
            self.storage.close()
            self.storage = None

    def close(self) -> None:
        with self.lock:
            counting = self.counting
        if counting is None or not counting.is_alive():  # one stuck on a hung database keeps its connection
            self._close_storage()


class _ReplicaLag:
    """How far behind the replica is (``--replica``), read from the replication
    that runs in this process (the parent, with workers) when scraped."""

    def __init__(self, lag):
        self.lag = lag

    def collect(self):
        yield GaugeMetricFamily("pods_replica_lag_seconds", "How long the oldest write not yet on the replica has"
                                " waited (0: the replica has every write); the furthest-behind replica's.",
                                value=self.lag())


class _ServerProcesses:
    """The standard process series for the whole server: the parent's and every
    live worker's, summed (CPU, memory, open descriptors); the start time is the
    parent's, the descriptor limit each process's own (they share it)."""

    KEEP_FIRST = ("process_start_time_seconds", "process_max_fds")

    def __init__(self):
        self.collectors = {os.getpid(): ProcessCollector(registry=None)}
        self.lock = threading.Lock()

    def started(self, pid: int) -> None:
        with self.lock:
            self.collectors[pid] = ProcessCollector(pid=lambda: pid, registry=None)

    def exited(self, pid: int) -> None:
        with self.lock:
            self.collectors.pop(pid, None)

    def collect(self):
        with self.lock:
            collectors = list(self.collectors.values())  # the parent's first
        merged = {}
        for collector in collectors:
            for family in collector.collect():
                if not family.samples:
                    continue
                if family.name not in merged:
                    merged[family.name] = family
                elif family.name not in self.KEEP_FIRST:
                    first = merged[family.name]
                    first.samples[0] = first.samples[0]._replace(value=first.samples[0].value + family.samples[0].value)
        return list(merged.values())


# -- the listener -----------------------------------------------------------------------


class Exporter:
    """The metrics listener on ``host``:``port`` (bound here: an address in use
    raises OSError before anything else starts), and the registry a scrape reads.
    With ``workers`` > 1, switches this process to prometheus_client's
    multiprocess mode first (``ServerMetrics`` made from then on, in the workers
    after the fork, write to files in a private directory)."""

    def __init__(self, host: str, port: int, db: str, workers: int = 1, by_org: bool = False):
        self.by_org = by_org
        self.pool = is_url(db)  # PostgreSQL: a connection pool in each serving process
        self.httpd = _listen(host, port)
        # No pods_*_created series: a second sample per counter and histogram, which
        # Prometheus's text format does not use (a server's start shows in
        # process_start_time_seconds).
        disable_created_metrics()
        self.port = self.httpd.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}{METRICS_PATH}"
        self.registry = CollectorRegistry()
        self.processes: _ServerProcesses | None = None
        self.multiprocess_dir = None
        if workers > 1:
            self.multiprocess_dir = _use_multiprocess_files()
            multiprocess.MultiProcessCollector(self.registry, path=self.multiprocess_dir)
            self.processes = _ServerProcesses()
            self.registry.register(self.processes)
        else:
            _use_one_process()
            ProcessCollector(registry=self.registry)
        self.registry.register(_BuildInfo(db))
        self.counts = _Counts(db)
        self.registry.register(self.counts)
        self.httpd.set_app(_metrics_only(make_wsgi_app(self.registry)))
        self._thread: threading.Thread | None = None

    def server_metrics(self) -> ServerMetrics:
        """The series this serving process records into (in a worker: after the fork)."""
        return ServerMetrics(None if self.multiprocess_dir else self.registry, self.by_org, self.pool)

    def watch_replica(self, lag) -> None:
        """Report ``lag()``, the replica's lag in seconds, as ``pods_replica_lag_seconds``."""
        self.registry.register(_ReplicaLag(lag))

    def start(self) -> None:
        """Answer scrapes from a thread of this process (the parent, with workers)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="pods-metrics", daemon=True)
        self._thread.start()

    def workers_forked(self, pids: list[int]) -> None:
        """Every worker is forked: answer scrapes from this process now (a thread
        started before a fork could hold a lock the child would inherit held)."""
        assert self.processes is not None  # with workers
        for pid in pids:
            self.processes.started(pid)
        self.start()

    def worker_exited(self, pid: int) -> None:
        """A worker is gone: its gauges leave the sums, its counts stay."""
        assert self.processes is not None  # with workers
        self.processes.exited(pid)
        multiprocess.mark_process_dead(pid, self.multiprocess_dir)

    def close_in_worker(self) -> None:
        """In a forked worker: the listener is the parent's."""
        self.httpd.socket.close()

    def stop(self) -> None:
        """Stop listening; remove the multiprocess directory."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
        self.counts.close()
        if self.multiprocess_dir is not None:
            shutil.rmtree(self.multiprocess_dir, ignore_errors=True)
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == self.multiprocess_dir:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            self.multiprocess_dir = None


MULTIPROCESS_PREFIX = "pods-metrics-"


def _use_multiprocess_files() -> str:
    """A new private directory (mode 0700, mkdtemp's) for the workers' files, named
    where prometheus_client looks for it, and its file-backed values from now on.
    Its name holds this process's id, so that the directories of servers killed
    before they could remove theirs (``kill -9``) are removed here."""
    _remove_orphans(tempfile.gettempdir())
    path = tempfile.mkdtemp(prefix=f"{MULTIPROCESS_PREFIX}{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # prometheus_client picks its value class when it is first imported, from the
    # environment as it was then; this process decides now.
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue()
    return path


def _remove_orphans(folder: str) -> None:
    """Remove the multiprocess directories in ``folder`` that are this user's and
    whose server process is gone."""
    for entry in os.scandir(folder):
        pid, _, suffix = entry.name[len(MULTIPROCESS_PREFIX):].partition("-")
        if not (entry.name.startswith(MULTIPROCESS_PREFIX) and pid.isdigit() and suffix):
            continue  # not a name _use_multiprocess_files gives
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not entry.is_dir(follow_symlinks=False):
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue  # alive under another user (EPERM), or gone from under us


def _use_one_process() -> None:
    """In-memory values, whatever PROMETHEUS_MULTIPROC_DIR said when prometheus_client
    was imported: one process needs no files."""
    prometheus_values.ValueClass = prometheus_values.MutexValue


def _metrics_only(metrics_app):
    """``GET /metrics`` and nothing else: other paths 404, other methods 405.

    One scrape answered at a time, and at most one every MIN_SCRAPE_INTERVAL: a
    scrape runs Python in the process (one process: the one serving requests),
    so clients scraping back to back would take the interpreter from requests.
    Prometheus scrapes every 15 s or so and never notices."""
    lock = threading.Lock()
    last = 0.0  # when the last scrape was answered (monotonic)

    def app(environ, start_response):
        nonlocal last
        if environ.get("PATH_INFO") != METRICS_PATH:
            return _plain(start_response, "404 Not Found", f"Not found: the metrics are at {METRICS_PATH}.\n")
        if environ.get("REQUEST_METHOD") != "GET":
            return _plain(start_response, "405 Method Not Allowed", "Only GET.\n", [("Allow", "GET")])
        with lock:
            wait = last + MIN_SCRAPE_INTERVAL - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                return metrics_app(environ, start_response)
            finally:
                last = time.monotonic()

    return app


def _plain(start_response, status: str, text: str, headers=()):
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT  # a client that sends nothing is let go

    def log_message(self, format, *args):  # wsgiref writes every request to stderr
        pass


class _MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per scrape, MAX_SCRAPERS at once (more are closed as they come, so
    that no client can take the process's threads or open files), each cut after
    SCRAPE_TIMEOUT whatever it does (one sending its head a byte at a time too)."""

    daemon_threads = True  # a scrape in progress never holds up shutdown
    allow_reuse_address = True
    slots: threading.BoundedSemaphore  # MAX_SCRAPERS of them, made in server_bind

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: a scraper tries again at its next interval
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        deadline = threading.Timer(SCRAPE_TIMEOUT, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self.slots.release()

    def server_bind(self):
        self.slots = threading.BoundedSemaphore(MAX_SCRAPERS)
        # HTTPServer's looks the host's name up in DNS (getfqdn), which may hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]
        self.setup_environ()

    def handle_error(self, request, client_address):
        log.debug("metrics: a scrape failed", exc_info=True)  # a client gone mid-answer, say


def _cut(sock: socket.socket) -> None:
    """End a scrape's connection past its deadline: its thread's read or write fails."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


def _listen(host: str, port: int) -> _MetricsServer:
    """:raise OSError: the address cannot be listened on."""
    server_class = _MetricsServer6 if ":" in host else _MetricsServer
    return server_class((host, port), _QuietHandler)
