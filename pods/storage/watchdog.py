"""Connections cut when the database server stops answering on them.

``statement_timeout`` is enforced by the server itself, and TCP keepalives and
``tcp_user_timeout`` only notice a peer whose kernel stops acknowledging. A server
process that is stopped (SIGSTOP, a frozen VM) or a proxy that accepts bytes and
never delivers them passes both: the request thread waiting for its answer would
wait forever, and /healthz and shutdown with it. So serving, each thread notes when
it takes its connection for a statement and when its request ends; a connection
that has waited longer than ``limit`` has its socket shut down, which ends the wait
at once with an error (the request's 503), and the pool replaces it.
"""

import logging
import os
import socket
import threading
import time
import weakref
from typing import Any

log = logging.getLogger("pods.db")


class StallWatchdog:
    def __init__(self, limit: float):
        self.limit = limit
        self._waiting: dict[int, tuple[Any, float]] = {}  # thread id -> (connection, when its current statement began)
        self._cut: weakref.WeakSet[Any] = weakref.WeakSet()  # connections this watchdog shut down
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pods-db-watchdog", daemon=True)
        self._thread.start()

    def busy(self, conn) -> None:
        """This thread starts a statement (or a transaction) on ``conn``."""
        with self._lock:
            self._waiting[threading.get_ident()] = (conn, time.monotonic())

    def idle(self) -> None:
        """This thread's request is over: it waits for nothing."""
        with self._lock:
            self._waiting.pop(threading.get_ident(), None)

    def was_cut(self, conn) -> bool:
        """Whether ``conn`` broke because this watchdog cut it (a server that is not
        answering: trying again on another connection would wait as long)."""
        return conn in self._cut

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(min(0.5, self.limit / 4)):
            now = time.monotonic()
            with self._lock:  # a thread cannot start its next statement on a connection being cut
                stalled = [(ident, conn, now - since) for ident, (conn, since) in self._waiting.items()
                           if now - since > self.limit]
                for ident, conn, waited in stalled:
                    del self._waiting[ident]
                    self._cut.add(conn)
                    _shut_down(conn)
                    log.error("the database server has not answered for %.0f s: connection closed"
                              " (its request answers 503)", waited)


def _shut_down(conn) -> None:
    """Shut down ``conn``'s socket under libpq, which still owns (and later closes) it."""
    try:
        duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except Exception:  # closed meanwhile: nothing to cut
        return
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()
