"""Graceful shutdown: SIGTERM or SIGINT stops accepting, lets the requests in
flight finish (bounded), then closes the database."""

import contextlib
import logging
import signal
import socket
import threading
import time

from waitress import wasyncore

from .channel import PodsChannel
from .server import READ_FLAGS, QueueDepthSummary

log = logging.getLogger("pods.server")

SHUTDOWN_GRACE_SECONDS = 10.0


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

    def poll_flags(self) -> int:
        return READ_FLAGS  # readable() and writable() in one call (PodsServer._poll)

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
        server.turn(timeout=0.05)
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
