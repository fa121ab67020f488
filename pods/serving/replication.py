"""Replication off the device: one Litestream process beside the server, for the
whole server whatever ``--workers`` says (docs/replication.md).

pods writes Litestream's configuration itself (owner-only, in a private temporary
directory removed at exit), starts Litestream, watches how far behind the replica
is (the log and ``/healthz`` say), restarts it if it dies, and at SIGTERM, once the
last request is answered, stops it after the last write is on the replica (bounded).

Litestream runs in a session of its own, so that a signal for the server's process
group (a terminal's Ctrl-C, ``kill -TERM -PGID``) does not reach it before the
server's last writes: it would make its last sync too early and exit. systemd, by
default, signals every process of the unit anyway; then Litestream has already
exited when the server is done, and pods runs ``litestream replicate -once`` to
send what came after. Litestream never outlives pods: the kernel kills it when the
thread that started it ends, which happens only after Litestream has exited, or
with the whole process (``kill -9``, a crash), so no Litestream goes on writing to
the replica from a stale view.

What pods itself does with the WAL stays safe for Litestream, which holds a read
transaction on the database so that nobody else can restart the WAL before it has
copied it, and at every sync compares the WAL with what it copied last (its salt
and last frame), starting from a full snapshot when they differ; it never leaves a
gap in the replica:
- requests' automatic checkpoints (PASSIVE; while replicating, past 10,000 pages
  only, Litestream's own at 1,000 doing the usual work: ``SQLiteStorage``) copy
  frames into the database file and can never restart the WAL while
  Litestream's read transaction holds it;
- ``pods backup`` reads in one read transaction, from a read-only connection that
  never checkpoints, and writes another file;
- the checkpoint at shutdown is not made while replicating (``serve``): it would
  truncate the WAL, which is safe but makes Litestream upload a full snapshot at
  the next start. The WAL stays beside the database, part of it as always.
"""

import contextlib
import ctypes
import http.client
import json
import logging
import math
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from ..storage.litestream import child_environment, redact, replica_config, scrub

log = logging.getLogger("pods.replica")

SYNC_INTERVAL = "1s"  # Litestream's pace: a replica is at most about a second behind
POLL_SECONDS = 0.5  # how often pods asks Litestream how far the replica is
BEHIND_SECONDS = 5.0  # lag past which the log says the replica is behind
CAUGHT_UP_SECONDS = 2.0  # lag under which it has caught up (under steady writes it is never quite 0)
BEHIND_REMINDER_SECONDS = 60.0  # while behind, the log says so again this often
STOP_SECONDS = 10.0  # the last sync at SIGTERM waits at most this long for the replica
RESTART_DELAY_MAX = 30.0  # a Litestream that keeps dying is restarted at most this often

if sys.platform.startswith("linux"):
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now: the child must not load anything
else:  # pragma: no cover
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when the thread that
    started it ends (Linux). SIGKILL, not SIGTERM: on SIGTERM Litestream would go on
    syncing for up to its shutdown timeout, beside a server that may already be
    starting again with a Litestream of its own."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Lag:
    """How far behind the replica is, shared with forked worker processes: an
    anonymous shared mapping, made before they fork, holds the monotonic time (one
    clock for every process of the machine) since which a write has been waiting
    to reach the replica, or 0 while none is."""

    def __init__(self):
        self._map = mmap.mmap(-1, 8)

    def set_behind_since(self, since: float) -> None:
        struct.pack_into("d", self._map, 0, since)

    def seconds(self) -> float:
        """Seconds the oldest write not yet on the replica has waited (0: none waits);
        what /healthz reports, and what a metric of replica lag reads."""
        since = struct.unpack_from("d", self._map, 0)[0]
        return 0.0 if since == 0 else max(0.0, time.monotonic() - since)


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over Litestream's control socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _sync(socket_path: str, db: str, wait_seconds: float = 0) -> tuple[int, int]:
    """Have Litestream copy the WAL's new frames (and, with ``wait_seconds``, send them
    to the replica, waiting that long at most); returns (the database's latest
    transaction id, the replica's).

    :raise OSError: Litestream does not answer, or answers an error.
    """
    body: dict[str, object] = {"path": db}
    if wait_seconds:
        body.update(wait=True, timeout=max(1, math.ceil(wait_seconds)))
    conn = _UnixConnection(socket_path, timeout=wait_seconds + 2 if wait_seconds else 2)
    try:
        conn.request("POST", "/sync", json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        data = json.loads(answer.read() or b"{}")
    except (http.client.HTTPException, ValueError) as e:
        raise OSError(str(e)) from None
    finally:
        conn.close()
    if answer.status != 200:
        raise OSError(data.get("error") or f"status {answer.status}")
    return int(data["txid"]), int(data["replicated_txid"])


class Replication:
    """One Litestream streaming the SQLite database ``db`` to ``url``.

    ``start`` and ``stop`` are called by the serving process's main thread;
    everything else happens in one thread of its own, Litestream's parent.
    """

    def __init__(self, db: str, url: str, binary: str):
        self.db = os.path.realpath(db)
        self.url = url
        self.shown = redact(url)
        self.binary = binary
        self.lag = Lag()
        self._stopping = threading.Event()
        self._ready = threading.Event()  # Litestream answered once
        self._settled = threading.Event()  # ... or its first start failed: start() waits no longer
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._dir = ""  # the private temporary directory, made by start()
        self._signalled = False  # Litestream said it received a signal (not from pods: the unit's, say)
        self._pending: list[tuple[int, float]] = []  # (transaction id, first seen) not on the replica, oldest first
        self._silent_since: float | None = None  # Litestream not answering since (monotonic)
        self._behind_said: float | None = None  # when the log last said the replica is behind (monotonic)

    # -- the main thread ------------------------------------------------------------

    def start(self, ready_seconds: float = 10.0) -> None:
        """Start Litestream; return once it has opened the database, or failed to
        start (then it is started again, the server serving meanwhile), or after
        ``ready_seconds`` at most."""
        self._dir = tempfile.mkdtemp(prefix="pods-litestream-")  # 0700
        self._thread = thread = threading.Thread(target=self._run, name="pods-replication", daemon=True)
        thread.start()
        if not self._settled.wait(ready_seconds):
            log.warning("replication to %s: Litestream has not answered after %.0f s; serving meanwhile",
                        self.shown, ready_seconds)

    def stop(self) -> None:
        """Once the server writes no more: the last sync (bounded), then Litestream
        stops; the temporary directory goes."""
        if self._stopping.is_set():
            return  # stopped already
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=3 * STOP_SECONDS + 10)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- Litestream's parent thread ----------------------------------------------------

    @property
    def _socket(self) -> str:
        return os.path.join(self._dir, "litestream.sock")

    def _run(self) -> None:
        delay = 1.0
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    self._proc = proc = self._spawn(once=False)
                except OSError as e:
                    self._proc, why = None, f"cannot start {self.binary}: {e.strerror}"
                else:
                    self._watch(proc)
                    if self._stopping.is_set():
                        break
                    code = proc.wait()
                    why = ("Litestream stopped on a signal that was not pods' (the service's SIGTERM, say)"
                           if self._signalled else f"Litestream exited with status {code}")
                self._settled.set()
                self._observe(None, None)
                if time.monotonic() - started > 60:
                    delay = 1.0
                log.warning("replication to %s: %s; restarting it in %.0f s", self.shown, why, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)
            self._last_sync()
        except Exception:
            self._settled.set()
            log.exception("replication to %s failed", self.shown)
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()

    def _write_config(self, once: bool) -> str:
        """Litestream's configuration, as JSON (which YAML reads): no quoting to get
        wrong, whatever the path or URL holds. Owner-only: the URL may hold a secret."""
        config = {
            "logging": {"level": "info", "type": "text"},
            # Its own last sync at SIGTERM: a no-op after pods' own (``_last_sync``); the whole of it
            # when the service's SIGTERM reached it first, and pods follows with -once.
            "shutdown-sync-timeout": f"{STOP_SECONDS / 2:.0f}s",
            "dbs": [{"path": self.db, "replica": {**replica_config(self.url), "sync-interval": SYNC_INTERVAL}}],
        }
        if not once:
            config["socket"] = {"enabled": True, "path": self._socket, "permissions": 0o600}
        path = os.path.join(self._dir, "litestream-once.yml" if once else "litestream.yml")
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        return path

    def _spawn(self, once: bool) -> subprocess.Popen:
        config = self._write_config(once)
        self._signalled = False
        proc = subprocess.Popen(
            [self.binary, "replicate", "-no-expand-env", "-config", config, *(["-once"] if once else [])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_environment(),
            start_new_session=True,  # a signal for the server's process group is not for it
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._relay, args=(proc,), name="pods-replication-log", daemon=True).start()
        return proc

    def _relay(self, proc: subprocess.Popen) -> None:
        """Litestream's log into pods' log, secrets masked: its warnings and errors as
        warnings, the rest at debug level."""
        assert proc.stdout is not None  # a pipe: Popen(stdout=PIPE)
        for raw in proc.stdout:
            line = scrub(raw.decode("utf-8", "replace").strip(), [self.url])
            if not line:
                continue
            if "signal received" in line:
                self._signalled = True
            line = re.sub(r"^time=\S+ ", "", line)
            level = re.match(r"level=(\w+)", line)
            if level and level.group(1).upper() in ("WARN", "ERROR") or line.startswith("Error"):
                log.warning("litestream: %s", line)
            else:
                log.debug("litestream: %s", line)
        proc.stdout.close()

    def _watch(self, proc: subprocess.Popen) -> None:
        """Until Litestream exits or the server stops: how far behind the replica is."""
        answered = False
        while not self._stopping.is_set() and proc.poll() is None:
            try:
                txid, replicated = _sync(self._socket, self.db)
            except OSError:
                self._observe(None, None)
            else:
                if not answered:
                    answered = True
                    # Read once, at start: gone from the disk while Litestream runs (a
                    # restart writes it again), so a kill -9 leaves no URL behind.
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(self._dir, "litestream.yml"))
                    log.info("replicating %s to %s (Litestream %d)", self.db, self.shown, proc.pid)
                    self._ready.set()
                    self._settled.set()
                self._observe(txid, replicated)
            self._stopping.wait(POLL_SECONDS)

    def _observe(self, txid: int | None, replicated: int | None) -> None:
        """Track the oldest write not on the replica (``txid`` None: Litestream is
        not answering, so behind from now on, unless it was already) and say in
        the log when the replica falls behind and when it catches up."""
        now = time.monotonic()
        if txid is None or replicated is None:
            self._silent_since = self._silent_since or now
        else:
            self._silent_since = None
            if not self._pending or txid > self._pending[-1][0]:
                self._pending.append((txid, now))
            while self._pending and self._pending[0][0] <= replicated:
                self._pending.pop(0)
        since = min([t for t in (self._pending[0][1] if self._pending else None, self._silent_since) if t] or [0])
        self.lag.set_behind_since(since)
        lag = self.lag.seconds()
        if lag > BEHIND_SECONDS and (self._behind_said is None or now - self._behind_said > BEHIND_REMINDER_SECONDS):
            why = "Litestream is not answering" if self._silent_since else "the replica is not taking writes"
            log.warning("replica %s is %.0f s behind (%s); serving on, the writes since are only on this device "
                        "until it catches up", self.shown, lag, why)
            self._behind_said = now
        elif lag < CAUGHT_UP_SECONDS and self._behind_said is not None:
            log.info("replica %s caught up", self.shown)
            self._behind_said = None

    def _last_sync(self) -> None:
        """At stop, the server having answered its last request: every write onto
        the replica, within STOP_SECONDS, then no Litestream left."""
        started = time.monotonic()
        deadline = started + STOP_SECONDS
        proc, position, done, asked = self._proc, None, False, False
        if proc is not None and proc.poll() is None and not self._signalled:
            asked = True
            with contextlib.suppress(OSError):
                position = _sync(self._socket, self.db, wait_seconds=STOP_SECONDS - 2)
                done = position[1] >= position[0]
            if not self._signalled:  # a second signal would cut Litestream's own last sync short
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        if proc is not None:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not done and (not asked or self._signalled):
            # Litestream had died, or it got the service's own SIGTERM (systemd signals
            # the whole unit) and made its last sync before the server's last writes.
            done = self._sync_once(deadline)
        took = time.monotonic() - started
        if done:
            at = f" (Litestream transaction {position[0]})" if position else ""
            log.info("replication stopped after %.1f s: every write is on the replica %s%s", took, self.shown, at)
        else:
            log.warning("replication stopped after %.1f s: the replica %s could not be reached; the writes of the "
                        "last %.0f s are only on this device, and go to the replica at the next start",
                        took, self.shown, self.lag.seconds())

    def _sync_once(self, deadline: float) -> bool:
        """``litestream replicate -once``: one sync of the database and its replica,
        killed at ``deadline``. Whether it succeeded."""
        try:
            proc = self._spawn(once=True)
        except OSError:
            return False
        try:
            return proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False
        finally:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self._dir, "litestream-once.yml"))
