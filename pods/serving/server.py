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

from .channel import Deadlines, PodsChannel

CONNECTION_LIMIT = 4096
# A request's line and headers together: a Pods API request needs a few hundred
# bytes (a page token, a key); waitress allows 256 KiB, which thousands of
# unfinished heads turn into gigabytes. nginx allows 4 x 8 KiB.
MAX_REQUEST_HEAD = 32 * 1024
# Connections waiting to be accepted (waitress's default).
BACKLOG = 1024
# At the connection limit, a connection idle for less than this is never closed to
# make room: a new one gets a fair chance to send its request.
EVICTION_MIN_IDLE_SECONDS = 1.0


class PodsServer(TcpWSGIServer):
    """waitress's TCP server on an already bound socket, with deadlines for every
    connection; one answer at a time per connection, so that a task thread never
    waits for a client (``add_task``); and, at the connection limit, room made
    for a connection waiting to be accepted by closing the one idle the longest,
    rather than refusing everyone new."""

    channel_class = PodsChannel
    stopping = False  # set at shutdown: every answer from then on closes its connection

    def __init__(self, app, sock, adj, deadlines: Deadlines, trusted_proxies, metrics=None):
        self.deadlines = deadlines
        self.trusted_proxies = trusted_proxies
        # serving/metrics.ServerMetrics, or None (metrics off): tasks record into it,
        # and it samples this server once a second (``maintenance``).
        self.metrics = metrics
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        super().__init__(app, map={}, _sock=sock, adj=adj, bind_socket=False, sockinfo=sockinfo)
        self.pending_connections = select.poll()
        self.pending_connections.register(sock, select.POLLIN)

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
            wasyncore.poll2(self.adj.asyncore_loop_timeout, self._map)

    def readable(self):
        return self.accepting and len(self.active_channels) < self.adj.connection_limit

    def _make_room(self, now: float) -> None:
        """For a connection waiting to be accepted, close the connection idle the
        longest: never one mid-request, nor one that has not had a fair chance to
        send its request. With none, the waiting one waits for a deadline."""
        if not self.pending_connections.poll(0):
            return  # nobody is waiting
        idle = [
            c for c in self.active_channels.values()
            if not c.busy and now - c.last_activity >= EVICTION_MIN_IDLE_SECONDS
        ]
        if idle:
            min(idle, key=lambda c: c.last_activity).handle_close()

    def maintenance(self, now):
        for channel in list(self.active_channels.values()):
            channel.enforce_deadlines(now, self.deadlines)
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
    metrics=None,
):
    """A waitress server for ``app`` on a bound socket, ready to ``run()``;
    ``metrics``: a serving/metrics.ServerMetrics to record into, or None."""
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
    return PodsServer(app, sock, adj, deadlines, trusted_proxies, metrics)
