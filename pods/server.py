"""Serving the app with waitress: configuration, graceful shutdown, worker processes."""

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask, WSGITask

from .errors import error_json

log = logging.getLogger("pods.server")

# Flask answers bodies over MAX_CONTENT_LENGTH (64 KiB). waitress reads up to this
# bound so that a client that sent a modest oversized body still reads its 413
# (closing a socket with unread bytes makes the kernel send a reset); beyond it
# waitress refuses from the headers alone, before buffering anything.
WAITRESS_BODY_LIMIT = 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 10.0


class JsonErrorTask(ErrorTask):
    """waitress's own answers (malformed request, body over the limit, headers too
    large) in the contract's JSON error shape instead of text/plain."""

    def execute(self):
        e = self.request.error
        detail = {"_request": [e.body]} if e.code == 400 else None
        body = error_json(e.code, errors=detail).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class CoalescingTask(WSGITask):
    """Sends the status line and headers in the same write as a body that comes in
    one piece, as every pods response does: one send() per response instead of two.
    Each send releases the GIL, and under load each hand-off costs more than the
    send (GET at 8 connections: +15%, measured)."""

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


class PodsChannel(HTTPChannel):
    task_class = CoalescingTask
    error_task_class = JsonErrorTask

    def writable(self):
        # While a task thread serves a request it sends its own output and pulls the
        # trigger when it cannot finish. Stock waitress still asks select() for
        # writability then; the socket is always writable, so the event loop spins,
        # failing to take the task's output lock, and competes with the task for the
        # GIL: under 32 keep-alive connections throughput fell by three quarters.
        if (
            self.requests
            and not (self.will_close or self.close_when_flushed)
            and self.total_outbufs_len < self.adj.outbuf_high_watermark
        ):
            return False
        return super().writable()

    @property
    def busy(self) -> bool:
        """Serving a request, holding unsent output, or part-way through reading one."""
        return bool(self.requests or self.total_outbufs_len or self.request is not None)


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


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A bound TCP socket. With reuse_port, several can share the port and Linux
    spreads new connections across them."""
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


def make_server(app, sock: socket.socket, threads: int):
    """A waitress server for ``app`` on a bound socket, ready to ``run()``."""
    server = create_server(
        app,
        sockets=[sock],
        threads=threads,
        ident="pods",
        max_request_body_size=WAITRESS_BODY_LIMIT,
    )
    server.channel_class = PodsChannel
    return server


def run_until_signalled(server, on_exit) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully.

    Stop accepting, let requests already received finish (at most
    SHUTDOWN_GRACE_SECONDS), close connections as they fall idle, stop the worker
    threads, then call ``on_exit`` (which closes the database).
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
    wasyncore.dispatcher.close(server)
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    while True:
        channels = [c for c in server._map.values() if isinstance(c, PodsChannel)]
        for channel in channels:
            if not channel.busy:
                channel.close()
        if not any(c.busy for c in channels) or time.monotonic() > deadline:
            break
        wasyncore.loop(timeout=0.05, map=server._map, count=1)
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


def run_workers(jobs: list) -> int:
    """Fork one process per job (each serves until signalled), forward SIGTERM and
    SIGINT to them, and wait. If one dies unasked, stop the others too, so that a
    supervisor such as systemd restarts the whole server. Returns 0 when every
    worker exited cleanly after a signal."""
    pids = set()
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                job()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                log.exception("worker failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
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
