"""Worker processes: the listening sockets they share, the open-file limit they
need, and the supervisor that forks them and stops them together."""

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time

from ..api import logstream
from .server import BACKLOG
from .shutdown import ShutdownSignal

log = logging.getLogger("pods.server")


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


def _die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies, so that a
    ``kill -9`` of the parent leaves no orphan workers serving (Linux only)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _wait_for_one_of(pids: set) -> tuple[int, int]:
    """Reap the next of ``pids`` to exit: (its pid, its wait status). Other children
    (Litestream, say: replication.py waits for its own) are left to whoever started
    them, so they are only looked at here, not reaped."""
    while True:
        exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if exited is not None and exited.si_pid in pids:
            return os.waitpid(exited.si_pid, 0)
        time.sleep(0.05)  # another's child: its owner reaps it in a moment


def run_workers(jobs: list, on_forked=None, on_exit=None) -> int:
    """Fork one process per job (each serves until signalled), forward SIGTERM and
    SIGINT to them, and wait. If one dies unasked, stop the others too, so that a
    supervisor such as systemd restarts the whole server; if the parent dies, the
    workers stop. Returns 0 when every worker exited cleanly after a signal.
    ``on_forked(pids)``, if given, is called in this process once every worker is
    forked, and ``on_exit(pid)`` once each is gone (metrics keep their books by them)."""
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
    if on_forked is not None:
        on_forked(sorted(pids))

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
        pid, wait_status = _wait_for_one_of(pids)
        pids.discard(pid)
        if on_exit is not None:
            on_exit(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not stopping:
            log.error("worker %d exited with status %d%s", pid, code, "" if stopping else "; stopping the others")
            status = 1
            if not stopping:
                stop_all(signal.SIGTERM)
    return status
