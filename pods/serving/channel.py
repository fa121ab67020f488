"""One client connection: deadlines, dropping an oversized body, and one answer
at a time."""

import contextlib
import dataclasses
import functools
import select
import socket
import time

from waitress.channel import HTTPChannel

from .admission import KeyCheck
from .parser import PodsRequestParser
from .scheduler import Tenant
from .task import CoalescingTask, JsonErrorTask

READ_FLAGS = select.POLLIN | select.POLLPRI  # what wasyncore.poll2 asks of a readable socket
# What is left of an oversized body is read and dropped, up to these bounds (nginx's
# lingering close), so that a client that writes its whole body before it reads
# (Python's http.client, curl --data-binary) still reads its 413.
DISCARD_MAX_BYTES = 16 * 1024 * 1024
DISCARD_MAX_SECONDS = 10.0
# Once the answer is sent, a client that sends nothing for this long is done.
LINGER_IDLE_SECONDS = 2.0


# Defaults of the serve flags of the same names (docs/operations.md).
HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 30.0
SEND_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Deadlines:
    """Seconds allowed, as the serve flags of the same names set them."""

    header: float = HEADER_TIMEOUT
    keepalive: float = KEEPALIVE_TIMEOUT
    send: float = SEND_TIMEOUT


class PodsChannel(HTTPChannel):
    """One client connection. Beyond waitress's channel it knows its deadlines
    (``enforce_deadlines``), how to drop an oversized body (``discard``), and it
    holds a pipelined request back until the answer before it has been sent
    (``PodsServer.add_task``)."""

    task_class = CoalescingTask
    error_task_class = JsonErrorTask

    discarding = False  # reading and dropping the rest of an oversized body
    holding = False  # not reading while a worker looks up the key of the request being read
    held_input = b""  # what came after its head meanwhile
    lingering = False  # the answer is sent (and our side shut); still dropping
    last_tenant: Tenant | None = None  # of the latest request read: the event loop's order (PodsServer._in_turn)
    # The next pipelined request waits for the answer before it to be sent.
    # Changed only under outbuf_lock, like the output it waits for.
    next_request_waiting = False
    close_when_flushed: bool  # waitress's, declared for the type checker
    request: PodsRequestParser | None  # waitress's: the request being read, declared for the type checker

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
        # (waitress's own test inlined: this runs for every connection on every turn of the loop.)
        if self.will_close or self.close_when_flushed:
            return True
        if self.requests and not self.next_request_waiting:
            return False
        return self.total_outbufs_len

    @property
    def busy(self) -> bool:
        """Serving a request, holding unsent output, or part-way through reading one."""
        return bool(self.requests or self.total_outbufs_len or self.request is not None)

    def stalled_for(self, now: float) -> float:
        """Seconds a request part-way read (its head or its body) has received
        nothing; 0 when no request is being read, or one is being served."""
        if self.request is None or self.requests or self.total_outbufs_len or self.holding:
            return 0.0
        return now - self.last_activity

    def received(self, data):
        if self.head_started is None:
            self.head_started = time.time()
        result = super().received(data)
        if self.request is None or self.request.headers_finished:
            self.head_started = None
        return result

    # -- deadlines ---------------------------------------------------------------

    def enforce_deadlines(self, now: float, limits: Deadlines) -> None:
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
        elif self.request is not None:  # reading a body: due whole within the same time after its head
            expired = now - (self.request.head_done or self.last_activity) > limits.header
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
        # waitress's own test, inlined (it runs for every connection on every turn of the
        # loop), with the two states of reading pods adds: dropping, and holding.
        if self.discarding:
            return True
        return not (self.holding or self.will_close or self.close_when_flushed or self.total_outbufs_len
                    or len(self.requests) > self.adj.channel_request_lookahead)

    def poll_flags(self) -> int:
        """What the event loop polls this connection for: readable() and writable()
        in one call (PodsServer._poll), as wasyncore.poll2 turns them into flags."""
        closing = self.will_close or self.close_when_flushed
        if self.discarding:
            flags = READ_FLAGS
        elif closing or self.holding or self.total_outbufs_len or len(self.requests) > self.adj.channel_request_lookahead:
            flags = 0
        else:
            flags = READ_FLAGS
        if closing or (self.total_outbufs_len and not (self.requests and not self.next_request_waiting)):
            flags |= select.POLLOUT
        return flags

    # -- a key to look up before a body is read --------------------------------------

    def hold(self, request: PodsRequestParser, rest: bytes) -> None:
        """Stop reading ``request`` (whose head is in, its body not) until a worker
        has looked up its key (``admission.KeyCheck``); ``rest`` came after its head."""
        self.holding = True
        self.held_input = rest
        request.held_expect, request.expect_continue = request.expect_continue, False
        self.server.task_dispatcher.add_task(KeyCheck(self, request), sheddable=False)

    def key_checked(self, request: PodsRequestParser, tenant: "Tenant | None") -> None:
        """In the event loop: the key of the request held is live (``tenant``: read
        its body) or not (None: answered without it, the body dropped)."""
        if not self.holding or request is not self.request or not self.connected:
            return  # closed meanwhile
        self.holding = False
        held, self.held_input = self.held_input, b""
        admission = self.server.admission
        if tenant is not None:
            admission.tenants.learn(request.key_hash, tenant)
            request.tenant = tenant
            request.expect_continue = request.held_expect
            if request.expect_continue and not self.requests and not self.sent_continue:
                self.send_continue()
            if held:
                self.received(held)
            return
        admission.withheld_total += 1
        announced = request.withhold()
        self.discard(already=len(held), announced=announced)
        with self.requests_lock:
            self.request = None
            self.requests.append(request)
            if len(self.requests) == 1:
                self.server.add_task(self)

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
