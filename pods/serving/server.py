"""Serving the app with waitress: connections, limits, graceful shutdown, worker processes.

pods adapts waitress in a few places (``PodsServer``, ``PodsChannel``,
``PodsRequestParser`` and the two task classes below), each for a reason given
where it is done. They use waitress internals, so pyproject.toml pins waitress to
the minor version they were written and tested against.
"""

import contextlib
import ctypes
import dataclasses
import functools
import io
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import Error, RequestEntityTooLarge

from ..api import accesslog, logstream
from ..api.errors import error_json

log = logging.getLogger("pods.server")

SHUTDOWN_GRACE_SECONDS = 10.0
# Defaults of the serve flags of the same names (see the README's configuration table).
HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 30.0
SEND_TIMEOUT = 30.0
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
# What is left of an oversized body is read and dropped, up to these bounds (nginx's
# lingering close), so that a client that writes its whole body before it reads
# (Python's http.client, curl --data-binary) still reads its 413.
DISCARD_MAX_BYTES = 16 * 1024 * 1024
DISCARD_MAX_SECONDS = 10.0
# Once the answer is sent, a client that sends nothing for this long is done.
LINGER_IDLE_SECONDS = 2.0


# The minor version of HTTP/1.2 ... HTTP/1.9: read as HTTP/1.1.
LATER_MINOR_VERSIONS = frozenset("23456789")
# A line that continues the one before (obs-fold, RFC 9112 section 5.2). Looked for
# in every request head: two `in` tests took two and a half times as long.
FOLDED_LINE = re.compile(rb"\r\n[ \t]")


class HttpVersionNotSupported(Error):
    code = 505
    reason = "HTTP Version Not Supported"


class PodsRequestParser(HTTPRequestParser):
    """waitress's request parser, stricter about framing, and different where a
    request ends its connection.

    Refused where waitress would guess (RFC 9112), each answered 400 and the
    connection closed: a request line without an HTTP version, a folded header
    line (section 5.2), Transfer-Encoding in HTTP/1.0, which waitress ignores
    and so reads the body as absent (section 6.1), and Content-Length together
    with Transfer-Encoding, a classic of request smuggling (section 6.1). A
    later HTTP/1 minor version (1.2 ... 1.9) is read as 1.1 (section 2.3);
    any other major version is 505.

    waitress answers a body over the limit itself, from the headers, and closes
    while the client is still writing: the kernel then resets the connection and
    many clients never read the answer. Here such a request is handed to the app
    at once, without its body and marked ``too_large`` (so the app answers it,
    after authentication, with its usual JSON 413). After it, and after any
    request waitress refuses (malformed, headers too large), the channel reads
    and drops what the client still sends (``PodsChannel.discard``) instead of
    leaving it unread.
    """

    too_large = False
    version_refused = False
    error: Error | None  # waitress's, declared for the type checker

    def __init__(self, adj, channel=None):
        super().__init__(adj)
        self.channel = channel

    def parse_header(self, header_plus):
        if FOLDED_LINE.search(header_plus) is not None:
            raise ParsingError("A header line may not be folded onto the next.")
        super().parse_header(header_plus)
        if self.version not in ("1.0", "1.1"):
            if self.version[:2] == "1." and self.version[2:] in LATER_MINOR_VERSIONS:
                self._parse_as_http_1_1(header_plus)
            elif not self.version:
                raise ParsingError("The request line has no HTTP version.")
            else:
                self.version_refused = True
                raise ParsingError("pods speaks HTTP/1.0 and HTTP/1.1.")
        if self.version == "1.0" and "TRANSFER_ENCODING" in self.headers:
            raise ParsingError("An HTTP/1.0 request may not have a Transfer-Encoding.")
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("A request may not have both Content-Length and Transfer-Encoding.")

    def _parse_as_http_1_1(self, header_plus):
        # Again, from scratch: waitress reads Transfer-Encoding and Expect in 1.1 only.
        line_end = header_plus.find(b"\r\n")
        request_line = header_plus[:line_end].rstrip()  # as waitress reads it
        self.headers = {}
        super().parse_header(request_line[:-1] + b"1" + header_plus[line_end:])

    def received(self, data):
        consumed = super().received(data)
        if self.error is None:
            return consumed
        announced = None
        if self.version_refused:
            self.error = HttpVersionNotSupported(self.error.body)
        elif isinstance(self.error, RequestEntityTooLarge):
            self.error = None
            self.too_large = True
            self.expect_continue = False  # never invite the body with "100 Continue"
            self.close()  # the part of a chunked body buffered so far
            self.body_rcv = None
            announced = None if self.chunked else self.content_length
        if self.channel is not None:
            self.channel.discard(already=len(data) - consumed, announced=announced)
        return len(data)  # the rest of this read is part of what is dropped

    @property
    def received_length(self) -> int:
        """At least the body's length: what it announced, or what came of it."""
        return max(self.content_length, self.body_bytes_received)


class CoalescingTask(WSGITask):
    """A request's task. Two things differ from waitress's:

    - It sends the status line and headers in the same write as a body that
      comes in one piece, as every pods response does: one send() per response
      instead of two. Each send releases the GIL, and under load each hand-off
      costs more than the send (GET at 8 connections: +15%, measured).
    - An oversized request (``PodsRequestParser``) reaches the app with no body
      and a Content-Length over the app's limit, so that werkzeug answers 413
      wherever a view reads the body; its connection closes after the answer.
      During shutdown, every answer closes its connection too.
    """

    wrote_header: bool  # waitress's, declared for the type checker

    def start(self):
        super().start()
        if self.request.too_large or self.channel.server.stopping:
            self.set_close_on_finish()

    def get_environment(self):
        environ = super().get_environment()
        if self.request.too_large:
            environ["CONTENT_LENGTH"] = str(self.request.received_length)
            environ["wsgi.input"] = io.BytesIO()
        return environ

    def write(self, data):
        if self.wrote_header or not data:
            return super().write(data)
        if not self.complete:
            raise RuntimeError("start_response was not called before body written")
        head = self.build_response_header()  # decides chunking and whether a body is allowed
        self.wrote_header = True
        fits = self.content_length is not None and len(data) <= self.content_length - self.content_bytes_written
        if self.has_body and not self.chunked_response and fits:
            self.content_bytes_written += len(data)
            self.channel.write_soon(head + data)
        else:  # HEAD, chunked, or more than announced: waitress's own handling of the body
            self.channel.write_soon(head)
            super().write(data)


class JsonErrorTask(ErrorTask):
    """waitress's own answers (a malformed request, headers too large, an error
    escaping the app) in the contract's JSON error shape instead of text/plain,
    with a request id, and logged like every other answer."""

    def execute(self):
        started = time.perf_counter()
        request, channel = self.request, self.channel
        e = request.error
        detail = {"_request": [e.body]} if e.code == 400 else None
        body = error_json(e.code, errors=detail).encode()
        request_id = accesslog.request_id_for(request.headers.get("X_REQUEST_ID", ""))
        self.status = f"{e.code} {e.reason}"
        self.response_headers += [("Content-Type", "application/json"), ("X-Request-Id", request_id)]
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        # A head too large to parse says nothing reliable about method or path.
        parsed = e.code != 431
        accesslog.write_line(
            getattr(request, "command", "") if parsed else "",
            getattr(request, "path", "") if parsed else "",
            e.code,
            started,
            request_id,
            client=accesslog.client_address(
                channel.addr[0], request.headers.get("X_FORWARDED_FOR"), channel.server.trusted_proxies
            ),
        )


class PodsChannel(HTTPChannel):
    """One client connection. Beyond waitress's channel it knows its deadlines
    (``enforce_deadlines``), how to drop an oversized body (``discard``), and it
    holds a pipelined request back until the answer before it has been sent
    (``PodsServer.add_task``)."""

    task_class = CoalescingTask
    error_task_class = JsonErrorTask

    discarding = False  # reading and dropping the rest of an oversized body
    lingering = False  # the answer is sent (and our side shut); still dropping
    # The next pipelined request waits for the answer before it to be sent.
    # Changed only under outbuf_lock, like the output it waits for.
    next_request_waiting = False
    close_when_flushed: bool  # waitress's, declared for the type checker

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        self.parser_class = functools.partial(PodsRequestParser, channel=self)
        # When the head of the request being read began to arrive. A new
        # connection's first request head is due from the moment it opened;
        # None while no head is being read.
        self.head_started = self.creation_time

    def writable(self):
        # While a task thread serves a request it sends its own output and pulls the
        # trigger when it cannot finish. Stock waitress still asks select() for
        # writability then; the socket is always writable, so the event loop spins,
        # failing to take the task's output lock, and competes with the task for the
        # GIL: under 32 keep-alive connections throughput fell by three quarters.
        # A request waiting for the output to go is not being served: send it.
        if self.requests and not (self.next_request_waiting or self.will_close or self.close_when_flushed):
            return False
        return super().writable()

    @property
    def busy(self) -> bool:
        """Serving a request, holding unsent output, or part-way through reading one."""
        return bool(self.requests or self.total_outbufs_len or self.request is not None)

    def received(self, data):
        if self.head_started is None:
            self.head_started = time.time()
        result = super().received(data)
        if self.request is None or self.request.headers_finished:
            self.head_started = None
        return result

    # -- deadlines ---------------------------------------------------------------

    def enforce_deadlines(self, now: float, limits: "Deadlines") -> None:
        """Close this connection if it is past a deadline (``now`` is time.time()).

        A request's head must arrive within ``limits.header`` of its first byte
        (of the connection's opening, for the first request), however slowly it
        trickles in; a body must keep coming, with no pause that long; an idle
        kept-alive connection is closed after ``limits.keepalive``; an answer
        must keep going out, with no pause longer than ``limits.send`` (so a
        client that stops reading holds one answer, and not for long). The app's
        own time is not limited here.
        """
        if self.discarding or self.lingering:
            expired = now > self.discard_deadline or (
                self.lingering and now - self.last_activity > LINGER_IDLE_SECONDS
            )
        elif self.total_outbufs_len:
            # last_activity moves with every byte sent, and nothing is read meanwhile.
            expired = now - self.last_activity > limits.send
        elif self.requests:
            expired = False  # the app is answering
        elif self.head_started is not None:
            expired = now - self.head_started > limits.header
        elif self.request is not None:  # reading a body
            expired = now - self.last_activity > limits.header
        else:
            expired = now - self.last_activity > limits.keepalive
        if expired:
            self.handle_close()

    def has_unread_input(self) -> bool:
        """Whether bytes (or the client's close) wait unread in the socket."""
        try:
            self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True  # a reset: reading it closes the channel
        return True

    # -- dropping an oversized body ------------------------------------------------

    def discard(self, already: int, announced: int | None) -> None:
        """Drop whatever the client still sends on this connection, which closes
        after the current answer: ``already`` bytes of it came with the request's
        head, and ``announced`` is how many the request announced (None when that
        is unknown). Stops there, at the client's close, or past DISCARD_MAX_BYTES
        or DISCARD_MAX_SECONDS."""
        self.discarding = True
        self.discard_deadline = time.time() + DISCARD_MAX_SECONDS
        self.discarded = 0
        self.discard_left = announced
        self._dropped(already)

    def readable(self):
        return self.discarding or super().readable()

    def handle_read(self):
        if not self.discarding:
            return super().handle_read()
        try:
            data = self.socket.recv(self.adj.recv_bytes)
        except OSError:
            self.handle_close()
            return
        if data:
            self.last_activity = time.time()
            self._dropped(len(data))
        else:  # the client has sent everything: answer (if not done yet), then close
            self._stop_discarding()

    def _dropped(self, count: int) -> None:
        self.discarded += count
        if self.discard_left is not None:
            self.discard_left -= count
        if (self.discard_left is not None and self.discard_left <= 0) or self.discarded > DISCARD_MAX_BYTES:
            self._stop_discarding()

    def _stop_discarding(self) -> None:
        # Not reading any more: the answer goes out (if it has not), then the
        # connection closes (ordinary close_when_flushed handling).
        self.discarding = False
        if self.lingering:
            self.handle_close()

    def handle_write(self):
        if self.discarding and self.close_when_flushed and not self.requests:
            # The answer is complete: send it, then shut our side (so the client
            # sees its end) and keep dropping what the client still sends, instead
            # of closing a socket with unread input, which resets the connection.
            self._flush_exception(self._flush_some)
            if self.will_close:
                self.handle_close()
            elif not self.total_outbufs_len:
                self.close_when_flushed = False
                self.lingering = True
                with contextlib.suppress(OSError):
                    self.socket.shutdown(socket.SHUT_WR)
            return
        super().handle_write()
        if self.next_request_waiting:
            with self.outbuf_lock:
                if self.next_request_waiting and not self.total_outbufs_len and self.connected:
                    self.next_request_waiting = False
                    self.server.task_dispatcher.add_task(self)


@dataclasses.dataclass(frozen=True)
class Deadlines:
    """Seconds allowed, as the serve flags of the same names set them."""

    header: float = HEADER_TIMEOUT
    keepalive: float = KEEPALIVE_TIMEOUT
    send: float = SEND_TIMEOUT


class PodsServer(TcpWSGIServer):
    """waitress's TCP server on an already bound socket, with deadlines for every
    connection; one answer at a time per connection, so that a task thread never
    waits for a client (``add_task``); and, at the connection limit, room made
    for a connection waiting to be accepted by closing the one idle the longest,
    rather than refusing everyone new."""

    channel_class = PodsChannel
    stopping = False  # set at shutdown: every answer from then on closes its connection
    next_channel_cleanup: float  # waitress's, declared for the type checker

    def __init__(self, app, sock, adj, deadlines: Deadlines, trusted_proxies):
        self.deadlines = deadlines
        self.trusted_proxies = trusted_proxies
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


class ShutdownSignal(wasyncore.dispatcher):
    """Wakes the event loop the moment SIGTERM or SIGINT arrives.

    The interpreter's C-level handler writes each signal's number to our socket
    (signal.set_wakeup_fd), so select() returns at once, and handle_read ends the
    loop with ExitNow, which waitress lets through.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    requested = False

    def __init__(self, map):
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        super().__init__(self.reader, map)
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            signal.signal(sig, lambda *_: None)  # the wakeup byte does the work

    def readable(self):
        return True

    def writable(self):
        return False

    def handle_read(self):
        received = self.reader.recv(64)
        # A repeated signal (Ctrl-C reaches workers twice: from the terminal and
        # from the parent) changes nothing: the shutdown under way is bounded.
        if not self.requested and any(sig in received for sig in self.SIGNALS):
            self.requested = True
            raise wasyncore.ExitNow

    def close(self):
        signal.set_wakeup_fd(-1)
        super().close()
        self.writer.close()


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening TCP sockets on ``host``:``port`` (0: a free port), one
    per worker process; Linux spreads new connections across them (SO_REUSEPORT).

    One server per address and port: SO_REUSEPORT would just as well let a second
    pods server (of the same user) join, and the kernel would then split clients
    between two databases. So the first socket is bound without it, which the
    kernel refuses while anything listens on that address and port (a wildcard
    address included), and listens at once; only then does it take SO_REUSEPORT,
    for the others to join. No lock name or file that another user could hold.

    :raise OSError: EADDRINUSE, something listens there already.
    """
    sockets = [_bound_socket(host, port, reuse_port=False)]
    try:
        sockets[0].listen(BACKLOG)
        if count > 1:
            sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            port = sockets[0].getsockname()[1]  # the real one, when 0 asked for any
            for _ in range(count - 1):
                sockets.append(_bound_socket(host, port, reuse_port=True))
                sockets[-1].listen(BACKLOG)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bound_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def raise_open_file_limit(connections: int) -> int:
    """Raise this process's open-file limit to fit ``connections`` (plus files of
    its own) as far as the hard limit allows. Returns the connections that fit."""
    import resource

    spare = 64  # the database, its WAL, the log, sockets of the event loop ...
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + spare
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return connections if soft == resource.RLIM_INFINITY else min(connections, soft - spare)


def make_server(
    app,
    sock: socket.socket,
    threads: int = 1,
    header_timeout: float = HEADER_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    send_timeout: float = SEND_TIMEOUT,
    connection_limit: int = CONNECTION_LIMIT,
    trusted_proxies: tuple = (),
):
    """A waitress server for ``app`` on a bound socket, ready to ``run()``."""
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
    deadlines = Deadlines(header=header_timeout, keepalive=keepalive_timeout, send=send_timeout)
    return PodsServer(app, sock, adj, deadlines, trusted_proxies)


def _loop_once(server, timeout: float) -> None:
    wasyncore.loop(timeout=timeout, map=server._map, use_poll=True, count=1)


def run_until_signalled(server, on_exit) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    Stop accepting, answer the requests already received (at most
    SHUTDOWN_GRACE_SECONDS; each answer closes its connection), close
    connections as they fall idle, stop the worker threads, then call
    ``on_exit`` (which closes the database).
    """
    logging.getLogger("waitress.queue").addFilter(QueueDepthSummary())
    stop = ShutdownSignal(server._map)
    with contextlib.suppress(wasyncore.ExitNow):  # how ShutdownSignal ends run()
        server.run()
    log.info("shutting down: finishing requests in flight")
    # Close the listening socket only (waitress's server.close() would also close
    # the trigger that task threads pull when they finish): new connections are
    # refused from now on.
    server.accepting = False
    server.stopping = True
    wasyncore.dispatcher.close(server)
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    while True:
        channels = [c for c in server._map.values() if isinstance(c, PodsChannel)]
        for channel in channels:
            # A request that arrived whole but is still unread in the socket has
            # been sent: the loop below reads and answers it, then the channel closes.
            if not channel.busy and not channel.has_unread_input():
                channel.close()
        if not any(c.busy or c.connected for c in channels) or time.monotonic() > deadline:
            break
        _loop_once(server, timeout=0.05)
    unfinished = [c for c in server._map.values() if isinstance(c, PodsChannel)]
    if unfinished:
        log.warning("grace period over: closing %d busy connection(s)", len(unfinished))
    for channel in unfinished:
        channel.close()
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
    # A finished thread's thread-local SQLite connections are closed as its state
    # is torn down; wait for that, so the checkpoint below is the last connection.
    for thread in threading.enumerate():
        if thread.name.startswith("waitress-"):
            thread.join(timeout=2)
    stop.close()
    server.trigger.close()
    on_exit()
    log.info("stopped")


def _die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies, so that a
    ``kill -9`` of the parent leaves no orphan workers serving (Linux only)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_workers(jobs: list) -> int:
    """Fork one process per job (each serves until signalled), forward SIGTERM and
    SIGINT to them, and wait. If one dies unasked, stop the others too, so that a
    supervisor such as systemd restarts the whole server; if the parent dies, the
    workers stop. Returns 0 when every worker exited cleanly after a signal."""
    parent = os.getpid()
    pids = set()
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                _die_with_parent(parent)
                job()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                log.exception("worker failed")
            finally:
                logstream.stderr.flush(timeout=2)
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                os._exit(code)
        pids.add(pid)

    stopping = False

    def stop_all(sig, _frame=None):
        nonlocal stopping
        stopping = True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, sig)

    for sig in ShutdownSignal.SIGNALS:
        signal.signal(sig, stop_all)
    status = 0
    while pids:
        pid, wait_status = os.wait()
        pids.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not stopping:
            log.error("worker %d exited with status %d%s", pid, code, "" if stopping else "; stopping the others")
            status = 1
            if not stopping:
                stop_all(signal.SIGTERM)
    return status
