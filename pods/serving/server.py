"""The listening socket and the event loop: waitress's TCP server with deadlines
for every connection, one answer at a time per connection, and room made at the
connection limit.

pods adapts waitress in a few places (here, ``channel.py``, ``parser.py`` and
``task.py``), each for a reason given where it is done. They use waitress
internals, so pyproject.toml pins waitress to the minor version they were written
and tested against (tests/test_pinned_internals.py names each one).
"""

import logging
import select
import socket
import sys
import time

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer

from . import ratelimit
from .admission import Admission
from .channel import READ_FLAGS, Deadlines, PodsChannel
from .handoff import LoopHandoff
from .scheduler import ANONYMOUS, FairDispatcher, Tenant

CONNECTION_LIMIT = 4096
# A request's line and headers together: a Pods API request needs a few hundred
# bytes (a page token, a key); waitress allows 256 KiB, which thousands of
# unfinished heads turn into gigabytes. nginx allows 4 x 8 KiB.
MAX_REQUEST_HEAD = 32 * 1024
# Connections waiting to be accepted (waitress's default).
BACKLOG = 1024
# At the connection limit, a connection idle for less than this is never closed to
# make room: a new one gets a fair chance to send its request. A request that has
# received nothing for this long (a head or an upload stalled) may be closed too.
EVICTION_MIN_IDLE_SECONDS = 1.0
# Default of --queue-timeout: a request that waited longer for a worker is answered 503, not run.
QUEUE_TIMEOUT = 5.0


class PodsServer(TcpWSGIServer):
    """waitress's TCP server on an already bound socket, with deadlines for every
    connection; one answer at a time per connection, so that a task thread never
    waits for a client (``add_task``); at the connection limit, room made for a
    connection waiting to be accepted by closing the one idle the longest, rather
    than refusing everyone new; and, in front of the worker threads, fair
    scheduling across tenants with rate limits and shedding (``admission``,
    ``task_dispatcher``: a ``FairDispatcher``)."""

    channel_class = PodsChannel
    stopping = False  # set at shutdown: every answer from then on closes its connection
    next_channel_cleanup: float  # waitress's, declared for the type checker

    def __init__(self, app, sock, adj, deadlines: Deadlines, trusted_proxies, admission: Admission, metrics=None):
        self.deadlines = deadlines
        self.trusted_proxies = trusted_proxies
        self.admission = admission
        # serving/metrics.ServerMetrics, or None (metrics off): tasks record into it,
        # and it samples this server once a second (``maintenance``).
        self.metrics = metrics
        dispatcher = FairDispatcher(self.tenant_of, admission.queue_timeout, self.shed)
        dispatcher.set_thread_count(adj.threads)
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        super().__init__(app, map={}, _sock=sock, adj=adj, bind_socket=False, sockinfo=sockinfo,
                         dispatcher=dispatcher)
        self.pending_connections = select.poll()
        self.pending_connections.register(sock, select.POLLIN)
        self.handoff = LoopHandoff(self.trigger.pull_trigger)
        dispatcher.between_tasks = self.handoff.between_tasks

    @staticmethod
    def tenant_of(task) -> Tenant:
        """Where a task queues: its request's tenant (the channel's next request, or
        a KeyCheck's); a request refused by waitress itself is its address's."""
        requests = getattr(task, "requests", None)  # a channel's (a KeyCheck has none)
        tenant = requests[0].tenant if requests else getattr(task, "tenant", None)
        return tenant or Tenant(ANONYMOUS, task.addr[0])

    def shed(self, channel, waited: float) -> None:
        """``channel``'s next request waited too long for a worker: answered 503, not run."""
        if channel.requests:
            self.admission.shed(channel.requests[0], waited)

    def add_task(self, channel):
        """Hand ``channel``'s next request to a task thread, unless the answer
        before it is still being sent: then the event loop hands it over once
        that answer is out (``PodsChannel.handle_write``).

        Called by the event loop for a connection's first request after a pause,
        and by the task thread that finished the previous one. A task thread thus
        never holds a second answer for a client that does not read the first:
        waitress's would buffer up to 16 MiB, then wait for the client, holding
        the thread (and with one thread, the whole server) for as long as the
        client likes.
        """
        # Only this caller adds output to the channel now, so an empty buffer stays
        # empty; one that is not may empty meanwhile, hence the lock.
        if channel.total_outbufs_len:
            with channel.outbuf_lock:
                if channel.total_outbufs_len:
                    channel.next_request_waiting = True
                    return
        self.task_dispatcher.add_task(channel)

    def run(self):
        """waitress's event loop, with deadlines and the connection limit enforced
        between its turns.

        Never during a turn: each turn first asks every connection what it waits
        for, then polls. A connection closed meanwhile would still be polled, and
        the event of its closed descriptor taken for whichever new connection was
        accepted with the same number, resetting it. And a connection that
        cannot be written to is closed at once, not when it becomes writable.
        """
        while self._map:
            now = time.time()
            if now >= self.next_channel_cleanup:
                self.next_channel_cleanup = now + self.adj.cleanup_interval
                self.maintenance(now)
            if self.accepting and len(self.active_channels) >= self.adj.connection_limit:
                self._make_room(now)
            self.turn(self.adj.asyncore_loop_timeout)

    def turn(self, timeout: float) -> None:
        """One turn of the loop, polling for at most ``timeout`` seconds (not at all
        while a worker waits for it: handoff.LoopHandoff)."""
        asked = self._poll(self.handoff.poll_timeout(timeout))
        self.handoff.turned(asked)

    def readable(self):
        return self.accepting and len(self.active_channels) < self.adj.connection_limit

    def poll_flags(self) -> int:
        """What the event loop polls the listening socket for (_poll): read (accept)
        below the connection limit, never write."""
        return READ_FLAGS if self.readable() else 0

    def _poll(self, timeout: float) -> float:
        """One turn of the loop: waitress's wasyncore.poll2, asking each connection
        what it waits for in one call (``PodsChannel.poll_flags``) instead of two;
        this runs for every connection on every turn, and under a flood of many
        connections it is the event loop's own cost per turn. Returns the seconds
        that asking took."""
        started = time.monotonic()
        socket_map = self._map
        pollster = select.poll()
        register = pollster.register
        for fd, obj in list(socket_map.items()):
            poll_flags = getattr(obj, "poll_flags", None)
            if poll_flags is not None:
                flags = poll_flags()
            else:
                flags = READ_FLAGS if obj.readable() else 0
                if obj.writable() and not obj.accepting:
                    flags |= select.POLLOUT
            if flags:
                register(fd, flags)
        asked = time.monotonic() - started
        try:
            events = pollster.poll(int(timeout * 1000))
        except InterruptedError:
            events = []
        if len(events) > 1:
            events = self._in_turn(events)
        for fd, flags in events:
            obj = socket_map.get(fd)
            if obj is not None:
                wasyncore.readwrite(obj, flags)
        return asked

    def _in_turn(self, events: list) -> list:
        """The events of this turn in the order to handle them: first those of
        connections whose tenant has nothing queued, then the others. Under a
        flood the loop finds dozens of connections ready at once, and reading
        them takes it milliseconds; a request of a tenant with a backlog would
        wait behind that backlog anyway, one of a tenant without goes first."""
        queued = self.task_dispatcher.queue.queued
        socket_map = self._map
        first, later = [], []
        for event in events:
            tenant = getattr(socket_map.get(event[0]), "last_tenant", None)
            if tenant is not None and queued(tenant):
                later.append(event)
            else:
                first.append(event)
        return first + later if later else first

    def _make_room(self, now: float) -> None:
        """For a connection waiting to be accepted, close the connection idle the
        longest, but not one that has not had a fair chance to send its request.
        With no idle connection at all, close the one whose request (head or
        body) has received nothing for longest, if that is a while: a stalled
        upload cannot hold its place. Never one being served. With none, the
        waiting one waits for a deadline."""
        if not self.pending_connections.poll(0):
            return  # nobody is waiting
        channels = self.active_channels.values()
        idle = [c for c in channels if not c.busy]
        if idle:
            longest = min(idle, key=lambda c: c.last_activity)
            if now - longest.last_activity >= EVICTION_MIN_IDLE_SECONDS:
                longest.handle_close()
            return
        stalled = max(channels, key=lambda c: c.stalled_for(now), default=None)
        if stalled is not None and stalled.stalled_for(now) >= EVICTION_MIN_IDLE_SECONDS:
            stalled.handle_close()

    def maintenance(self, now):
        for channel in list(self.active_channels.values()):
            channel.enforce_deadlines(now, self.deadlines)
        # Requests that waited past the queue timeout while every worker was busy:
        # answered here (503, cheap), not left for a worker to reach.
        for channel, waited in self.task_dispatcher.take_expired(time.monotonic()):
            self.shed(channel, waited)
            channel.service()
        if self.metrics is not None:
            self.metrics.sample(self)


class QueueDepthSummary(logging.Filter):
    """waitress warns "Task queue depth is N" for every request that waits for a
    thread: thousands of lines a second under load, and even two requests in a
    row on one thread make one. Let one line through per interval, once the
    queue has been ``min_depth`` deep, with the peak depth since the last one."""

    def __init__(self, interval: float = 60.0, min_depth: int = 10):
        super().__init__()
        self.interval = interval
        self.min_depth = min_depth
        self.next_report = 0.0
        self.peak = 0

    def filter(self, record):
        depth = record.args[0] if record.args else 0
        self.peak = max(self.peak, depth)
        now = time.monotonic()
        if self.peak < self.min_depth or now < self.next_report:
            return False
        record.msg = (
            "requests are waiting for a worker thread: peak queue depth %d "
            "(reported at most every %ds; more --threads or --workers may help)"
        )
        record.args = (self.peak, self.interval)
        self.peak, self.next_report = 0, now + self.interval
        return True


def make_server(
    app,
    sock: socket.socket,
    threads: int = 1,
    deadlines: Deadlines = Deadlines(),
    connection_limit: int = CONNECTION_LIMIT,
    trusted_proxies: tuple = (),
    limits: ratelimit.Limits = ratelimit.Limits(),
    buckets: ratelimit.SharedBuckets | None = None,
    queue_timeout: float = QUEUE_TIMEOUT,
    metrics=None,
):
    """A waitress server for ``app`` on a bound socket, ready to ``run()``.
    ``buckets``: the rate limits' shared state (made before the worker processes
    are forked); made here when ``limits`` are set and none is given. ``metrics``:
    a serving/metrics.ServerMetrics to record into, or None."""
    adj = Adjustments(
        sockets=[sock],
        threads=threads,
        ident="pods",
        backlog=BACKLOG,
        max_request_header_size=MAX_REQUEST_HEAD,
        # Bodies over the app's limit are answered by the app without being read
        # (PodsRequestParser); this makes waitress hand them over that way.
        max_request_body_size=app.config["MAX_CONTENT_LENGTH"] + 1,
        # A task thread writing an answer never waits for the client to read: a
        # connection buffers one answer at a time (PodsServer.add_task), and
        # --send-timeout closes it when that answer stops moving.
        outbuf_high_watermark=sys.maxsize,
        connection_limit=connection_limit,
        cleanup_interval=1,  # PodsServer.maintenance enforces the deadlines
        asyncore_use_poll=True,  # select() cannot watch descriptors past 1,024
        # The access log decides whose X-Forwarded-For to believe (--trusted-proxy);
        # waitress's own handling would answer a malformed one in plain text.
        clear_untrusted_proxy_headers=False,
    )
    if limits and buckets is None:
        buckets = ratelimit.SharedBuckets()
    admission = Admission(app, limits, buckets, trusted_proxies, queue_timeout)
    try:
        admission.know_live_keys()
    except Exception as e:  # a convenience: each key is learned from its first request anyway
        logging.getLogger("pods.server").warning("could not read the live keys to schedule by: %s", e)
    return PodsServer(app, sock, adj, deadlines, trusted_proxies, admission, metrics)
