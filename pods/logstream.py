"""Log lines go to stderr from a background thread, so that nobody reading them
can ever hold up a request or a shutdown.

A wrapper that captures stderr into a pipe and stalls, or a terminal paused with
Ctrl-S, blocks every write to it once its buffer is full. Lines are therefore
queued in memory (at most MAX_PENDING of them) and written by one thread; when the
queue is full, new lines are dropped and counted, and once the stream takes lines
again a warning says how many were lost.
"""

import atexit
import collections
import logging
import os
import select
import threading
import time

MAX_PENDING = 4096  # lines; about 600 KB of access-log lines
BATCH_DELAY = 0.01  # seconds a woken writer waits, so that one write carries many lines


_second = (None, "")  # (whole second, its text): one tuple, swapped atomically


def utc_timestamp(now: float) -> str:
    """``now`` as every log line shows it: 2026-11-29T04:38:45.900Z."""
    global _second
    whole = int(now)
    second, text = _second
    if second != whole:  # strftime once a second, not once a line
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int((now - whole) * 1000):03d}Z"


class LogStream:
    """Lines for file descriptor ``fd``, written in the order they came, by a thread
    of their own. ``write`` never blocks."""

    def __init__(self, fd: int = 2):
        self.fd = fd
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # threads do not survive a fork

    def _reset(self) -> None:
        self._pending = collections.deque()
        self._dropped = 0
        self._drop_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = None
        self._start_lock = threading.Lock()

    def write(self, line: str) -> None:
        """Queue one line (with its newline); drop it if the queue is full."""
        if len(self._pending) >= MAX_PENDING:
            with self._drop_lock:
                self._dropped += 1
            return
        self._pending.append(line)
        if self._thread is None:
            self._start()
        if not self._wakeup.is_set():
            self._wakeup.set()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued line to be written.
        Returns False when the stream did not take them in time."""
        deadline = time.monotonic() + timeout
        while self._pending or not self._idle.is_set():
            if time.monotonic() >= deadline:
                return False
            self._idle.wait(0.01)
        return True

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pods-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._idle.clear()
            time.sleep(BATCH_DELAY)
            self._wakeup.clear()
            while self._pending:
                # Whole lines, at most PIPE_BUF bytes a write: the kernel keeps such a
                # write in one piece even when other workers write to the same pipe.
                batch = [self._pending.popleft()]
                size = len(batch[0])
                while self._pending and size + len(self._pending[0]) <= select.PIPE_BUF:
                    batch.append(self._pending.popleft())
                    size += len(batch[-1])
                self._send("".join(batch))
            with self._drop_lock:
                dropped, self._dropped = self._dropped, 0
            if dropped:
                self._send(
                    f"{utc_timestamp(time.time())} WARNING pods.log {dropped} log line(s) dropped"
                    " while the log stream was not being read\n"
                )
            self._idle.set()

    def _send(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # closed or gone: these lines are lost, the server goes on
            pass


stderr = LogStream(2)
# Lines still queued when the process exits are written first, unless the stream
# is stalled: then the exit waits this long at most. (Forked workers end with
# os._exit and flush themselves.)
atexit.register(stderr.flush, 2.0)


class UTCFormatter(logging.Formatter):
    """Times as the access log writes them: UTC, milliseconds, ``Z``."""

    def formatTime(self, record, datefmt=None):
        return utc_timestamp(record.created)


class LogStreamHandler(logging.Handler):
    """A logging handler that writes through a LogStream."""

    def __init__(self, stream: LogStream):
        super().__init__()
        self.stream = stream
        self.setFormatter(UTCFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record):
        try:
            self.stream.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
