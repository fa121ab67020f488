"""Prometheus metrics (``--metrics-port``): every series, the calls that record
them; ``exporter.py`` serves them. docs/metrics.md says what each means.

Who records what, layer by layer (nothing below this module knows Prometheus):

- the Flask side reports each answer through the ``observer`` given to
  ``create_app``: ``AccessLog`` calls ``ServerMetrics.answer`` with a route
  template, never a path; the storage, instrumented by ``storage.observed``,
  calls ``db_operation`` and ``db_error`` with the backend's own error kinds;
- the waitress side (``task.py``) calls ``queue_wait`` as a thread takes a
  request, and ``answer`` for the refusals waitress makes itself; the event loop
  calls ``sample`` once a second (``PodsServer.maintenance``), which reads what
  is only a number somewhere (the queue's length, the connections' states, the
  database pool's figures, the log lines dropped);
- a scrape reads the rest itself: the counts of organizations, keys and pods
  (``_Counts``), the build, the processes.

A request's records go to tallies of its thread's own (plain numbers, no lock),
which ``ServerMetrics.fold`` adds to the series: at every scrape of one process,
and once a second on each worker's event loop (so with ``--workers`` a scrape is
up to about two seconds behind), and as a worker stops.

One process (``--workers 1``): the series live in this process's registry, and
the listener is a thread of it. Several: the parent makes a private directory
(mode 0700) before it forks, and each worker writes its series there, each in
files of its own (prometheus_client's multiprocess mode); the listener is a
thread of the parent, which serves no request, so a scrape costs the workers
nothing. A scrape sums the workers' files; a worker that is gone is marked dead
(its gauges leave the sum, its counts stay in it), so a worker started again
under a new pid neither resets nor doubles what was counted. The directory is
removed when the server stops.

Labels take values from fixed sets only: methods (anything else is "other"),
route templates and three route names of our own (``accesslog.UNMATCHED_ROUTE``,
``HTTP_ERROR_ROUTE``, ``REFUSED_ROUTE``), statuses, error kinds, storage operations, connection
states; with ``--metrics-by-org``, organization names, which the operator
chooses. Never a path, an id, a token, a client_id or a pod's name.
"""

import bisect
import logging
import threading
from threading import get_ident

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..api import logstream
from ..storage.observed import ERROR_KINDS, OPERATIONS

log = logging.getLogger("pods.metrics")

# Seconds. Answers from a tenth of a millisecond (a 404, a cached GET) to ten seconds
# (a request held by a lock or a stalled database); queue waits alike.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The values of the ``method`` label; a client may send any token as a method.
BUCKET_SLOTS = len(BUCKETS) + 1  # and +Inf
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
OTHER_METHOD = "other"
CONNECTION_STATES = ("idle", "reading", "mid_request")


class ServerMetrics:
    """The series one serving process records, and the calls that record them.

    ``registry``: where the series are registered (one process), or None (a worker
    with several: prometheus_client's multiprocess files hold them). ``by_org``:
    also count requests and 429s per organization (``--metrics-by-org``).
    ``pool``: the database has a connection pool (PostgreSQL), with series of its own.
    """

    def __init__(self, registry: CollectorRegistry | None, by_org: bool = False, pool: bool = False):
        r = registry
        self.by_org = by_org
        if registry is not None:
            registry.register(_FoldFirst(self))  # before the series: a scrape folds, then reads them
        self.requests = Counter(
            "pods_http_requests", "Answers, by method, route template and status; waitress's own refusals"
            " (malformed, head too large) under the route http_error, unknown paths under unmatched, 429s and"
            " shed 503s (never run) under refused.",
            ["method", "route", "status"], registry=r)
        self.request_duration = Histogram(
            "pods_http_request_duration_seconds", "Time the app took to answer, by method and route template.",
            ["method", "route"], buckets=BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram(
            "pods_http_queue_wait_seconds", "Time a request waited, from arriving whole to a thread taking it.",
            buckets=BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "pods_http_queue_depth", "Connections whose request waits for a thread (sampled every second).",
            multiprocess_mode="livesum", registry=r)
        self.connections = Gauge(
            "pods_http_connections", "Open client connections by state: idle (between requests), reading"
            " (a request arriving), mid_request (queued, being answered, or its answer being sent).",
            ["state"], multiprocess_mode="livesum", registry=r)
        self.rate_limited_total = Counter(
            "pods_rate_limited", "Requests refused 429 over a rate limit.", registry=r)
        self.shed_total = Counter(
            "pods_shed", "Requests answered 503 unexecuted after waiting past the queue timeout.", registry=r)
        self.db_errors = Counter(
            "pods_db_errors", "Storage operations failed by a database error, by kind: locked, unavailable,"
            " timeout, other.", ["kind"], registry=r)
        self.db_duration = Histogram(
            "pods_db_operation_duration_seconds", "Time of each storage operation (its statements, and its waits"
            " for SQLite's write lock or a pool connection), by operation.", ["operation"], buckets=BUCKETS,
            registry=r)
        if pool:
            self.pool_connections = Gauge(
                "pods_db_pool_connections", "PostgreSQL pool connections by state: idle (in the pool), in_use"
                " (held by a request thread or the key-use recorder).", ["state"], multiprocess_mode="livesum",
                registry=r)
            self.pool_max = Gauge(
                "pods_db_pool_max_connections", "Most connections the PostgreSQL pool may open.",
                multiprocess_mode="livesum", registry=r)
            self.pool_waiting = Gauge(
                "pods_db_pool_waiting", "Threads waiting for a PostgreSQL pool connection now.",
                multiprocess_mode="livesum", registry=r)
            self.pool_waits = Counter(
                "pods_db_pool_waits", "Times a thread found no idle PostgreSQL pool connection and waited.",
                registry=r)
            self.pool_wait_seconds = Counter(
                "pods_db_pool_wait_seconds", "Time threads spent waiting for a PostgreSQL pool connection.",
                registry=r)
        self.log_lines_dropped = Counter(
            "pods_log_lines_dropped", "Log lines dropped because stderr was not being read or could not be written.",
            registry=r)
        if by_org:
            self.org_requests = Counter(
                "pods_org_http_requests", "Answers to authenticated requests, by organization.", ["org"], registry=r)
            self.org_rate_limited = Counter(
                "pods_org_rate_limited", "Requests refused 429 over a rate limit, by organization.", ["org"],
                registry=r)
        # Every histogram child exists from the start (at 0), as do the error kinds.
        self._operations = {name: _parts(self.db_duration.labels(name)) for name in OPERATIONS}
        self._queue_wait = _parts(self.queue_wait_seconds)
        self._errors = {kind: self.db_errors.labels(kind) for kind in ERROR_KINDS}
        # Tallies: thread ident -> {what: [numbers]}, each written by its own thread only.
        self._tallies: dict[int, dict] = {}
        self._tallies_lock = threading.Lock()
        self._folded: dict[tuple, list] = {}  # (ident, what) -> its numbers when last folded
        self._fold_lock = threading.Lock()
        self._answers: dict[tuple, tuple] = {}  # (method, route, status) -> (counter, histogram parts)
        self._states = {state: self.connections.labels(state) for state in CONNECTION_STATES}
        self._pool = pool
        self._storage = None
        self._dropped_seen = 0
        self._pool_seen: dict[str, float] = {}

    # -- recorded as requests are answered ----------------------------------------------
    #
    # A request thread adds to tallies of its own: plain lists in a dict only it
    # writes to, a third of the cost of prometheus-client's values (each a lock, a
    # method, a check). ``fold`` moves what is new into the series: at every scrape
    # of one process, once a second on every worker's event loop (``sample``), and
    # as a worker stops. Its cost grows with the series, not with the requests.

    def answer(self, method: str, route: str, status: str, seconds: float, caller=None) -> None:
        """One answer (``AccessLog`` and ``task.record_refusal``): ``route`` is a
        template or a route name of accesslog's, ``caller`` the authenticated key's
        (accesslog.CALLER_ENVIRON_KEY), or None."""
        if method not in METHODS:
            method = OTHER_METHOD
        tally = self._tallies.get(get_ident()) or self._tally()
        key: tuple = ("answer", method, route, status)
        numbers = tally.get(key)
        if numbers is None:
            numbers = tally[key] = [0] * (2 + BUCKET_SLOTS)  # count, sum, one per bucket
        numbers[0] += 1
        numbers[1] += seconds
        numbers[2 + bisect.bisect_left(BUCKETS, seconds)] += 1
        if self.by_org and caller is not None:
            self._count(("org", caller.org_name))
        if status == "429":
            self.rate_limited(caller)

    def rate_limited(self, caller=None) -> None:
        """A request refused over a rate limit; ``caller`` as for ``answer``."""
        self._count(("limited", caller.org_name if self.by_org and caller is not None else None))

    def shed(self) -> None:
        """A request answered 503 without being run: it waited too long for a thread."""
        self._count(("shed",))

    def _count(self, key: tuple) -> None:
        """Counted in the tallies, as answers are: a scrape finds a 429 in
        ``pods_rate_limited_total`` exactly when it finds its answer."""
        tally = self._tallies.get(get_ident()) or self._tally()
        numbers = tally.get(key)
        if numbers is None:
            numbers = tally[key] = [0]
        numbers[0] += 1

    def queue_wait(self, seconds: float) -> None:
        self._observe("queue", seconds)

    def db_operation(self, operation: str, seconds: float) -> None:
        self._observe(operation, seconds)

    def _observe(self, key, seconds: float) -> None:
        tally = self._tallies.get(get_ident()) or self._tally()
        numbers = tally.get(key)
        if numbers is None:
            numbers = tally[key] = [0] * (1 + BUCKET_SLOTS)  # sum, one per bucket
        numbers[0] += seconds
        numbers[1 + bisect.bisect_left(BUCKETS, seconds)] += 1

    def _tally(self) -> dict:
        """This thread's tallies (made on its first record). A thread that ends
        leaves them, folded; one started later under the same ident goes on with them."""
        with self._tallies_lock:
            return self._tallies.setdefault(get_ident(), {})

    def fold(self) -> None:
        """Move what the threads tallied since the last fold into the series."""
        with self._fold_lock:
            for ident, tally in list(self._tallies.items()):
                for key, numbers in list(tally.items()):  # list() and copy(): whole, under the GIL
                    now = numbers.copy()
                    before = self._folded.get((ident, key))
                    if now == before:
                        continue
                    self._folded[ident, key] = now
                    self._add(key, now if before is None else [a - b for a, b in zip(now, before)])

    def _add(self, key, new: list) -> None:
        if key == "queue":
            _add_observations(self._queue_wait, new)
        elif key in self._operations:
            _add_observations(self._operations[key], new)
        elif key[0] == "answer":
            targets = self._answers.get(key)
            if targets is None:
                _, method, route, status = key
                targets = self._answers[key] = (self.requests.labels(method, route, status),
                                                _parts(self.request_duration.labels(method, route)))
            if new[0]:
                targets[0].inc(new[0])
            _add_observations(targets[1], new[1:])
        elif key[0] == "org":
            self.org_requests.labels(key[1]).inc(new[0])
        elif key[0] == "limited":
            self.rate_limited_total.inc(new[0])
            if key[1] is not None:
                self.org_rate_limited.labels(key[1]).inc(new[0])
        else:  # ("shed",)
            self.shed_total.inc(new[0])

    def db_error(self, kind: str) -> None:
        self._errors[kind].inc()

    # -- sampled once a second, on the event loop ----------------------------------------

    def watch_storage(self, storage) -> None:
        """Sample ``storage``'s connection pool from now on (PostgreSQL)."""
        self._storage = storage

    def sample(self, server) -> None:
        """What is only a number somewhere: read it into the series; and fold."""
        self.fold()
        sample_queue_depth(self, server)
        sample_connections(self, server)
        self._sample_log()
        if self._pool and self._storage is not None:
            self._sample_pool(self._storage.pool_stats())

    def _sample_log(self) -> None:
        dropped = logstream.stderr.dropped_total
        if dropped > self._dropped_seen:
            self.log_lines_dropped.inc(dropped - self._dropped_seen)
        self._dropped_seen = dropped

    def _sample_pool(self, stats: dict | None) -> None:
        if stats is None:
            return
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        self.pool_connections.labels("idle").set(idle)
        self.pool_connections.labels("in_use").set(max(size - idle, 0))
        self.pool_max.set(stats.get("pool_max", 0))
        self.pool_waiting.set(stats.get("requests_waiting", 0))
        # Counters since the pool opened: what is new since the last sample.
        queued, wait_ms = stats.get("requests_queued", 0), stats.get("requests_wait_ms", 0)
        seen_queued, seen_ms = self._pool_seen.get("queued", 0), self._pool_seen.get("wait_ms", 0)
        if queued < seen_queued or wait_ms < seen_ms:  # a new pool: start again from it
            seen_queued = seen_ms = 0
        self.pool_waits.inc(queued - seen_queued)
        self.pool_wait_seconds.inc((wait_ms - seen_ms) / 1000)
        self._pool_seen = {"queued": queued, "wait_ms": wait_ms}


class _FoldFirst:
    """Registered before a process's series: a scrape folds the tallies first."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self):
        self.metrics.fold()
        return []


def _parts(histogram: Histogram) -> tuple:
    """What observing ``histogram`` (one without labels, or a child) writes: its sum
    and its buckets (prometheus-client's values, one per bucket, not cumulative),
    which ``fold`` adds to as ``Histogram.observe`` would, many observations at a
    time. (prometheus-client's internals: pyproject.toml holds it to the minor
    version tested; tests/api/test_metrics.py checks the result against ``observe``.)"""
    assert list(histogram._upper_bounds) == [*BUCKETS, float("inf")]
    return histogram._sum, histogram._buckets


def _add_observations(parts: tuple, new: list) -> None:
    """Add tallied observations, ``new`` = [sum, count in each bucket], to a histogram's ``parts``."""
    total, buckets = parts
    if new[0]:
        total.inc(new[0])
    for bucket, count in zip(buckets, new[1:]):
        if count:
            bucket.inc(count)


def sample_queue_depth(metrics: ServerMetrics, server) -> None:
    """Connections whose next request waits for a thread: waitress's task queue."""
    metrics.queue_depth.set(len(server.task_dispatcher.queue))


def sample_connections(metrics: ServerMetrics, server) -> None:
    counts = dict.fromkeys(CONNECTION_STATES, 0)
    for channel in list(server.active_channels.values()):
        if channel.requests or channel.total_outbufs_len:
            counts["mid_request"] += 1
        elif channel.request is not None:
            counts["reading"] += 1
        else:
            counts["idle"] += 1
    for state, count in counts.items():
        metrics._states[state].set(count)


# -- what a scrape reads itself ----------------------------------------------------------
