"""Log lines go to stderr from a background thread, so that nobody reading them
can ever hold up a request or a shutdown; and every line is one safe entry.

A wrapper that captures stderr into a pipe and stalls, or a terminal paused with
Ctrl-S, blocks every write to it once its buffer is full. Lines are therefore
queued in memory (at most MAX_PENDING of them) and written by one thread; when the
queue is full, or a write fails (a full disk, a reader gone), lines are dropped
and counted, and once the stream takes lines again a warning says how many were
lost.

Queuing a line wakes nobody while the writer is busy: it writes what has queued
every FLUSH_INTERVAL, and is woken early only by FLUSH_AT lines waiting or by
``flush``. A wake per line (or per short batch) was a thread hand-off, and a turn
of the interpreter lock, for a good share of the requests served.

Every record is formatted by ``LogFormatter``: one entry per record, printable
whatever its message holds, its traceback on indented lines below it.
"""

import atexit
import collections
import logging
import os
import select
import threading
import time

MAX_PENDING = 4096  # lines; about 600 KB of access-log lines
FLUSH_INTERVAL = 0.05  # seconds between the writer's rounds while lines keep coming
FLUSH_AT = 1024  # lines queued that wake the writer before its round (a quarter of MAX_PENDING)


_second: tuple[int | None, str] = (None, "")  # (whole second, its text): one tuple, swapped atomically

# With --workers N above 1, " worker=K" ends every line a process writes: K is the
# worker (1 to N), 0 their parent. Empty with one process, so its lines stay as they were.
WORKER = ""


def name_worker(number: int) -> None:
    """From now on, every line this process logs ends with ``worker=NUMBER``."""
    global WORKER
    WORKER = f" worker={number}"


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
        self._pending: collections.deque[str] = collections.deque()
        self._dropped = 0  # since the last warning about them
        self.dropped_total = 0  # since the process started (metrics read it)
        self._drop_lock = threading.Lock()
        self._wakeup = threading.Event()
        # The writer waits for a line to come (True), rather than for its next round:
        # only then does a line wake it.
        self._parked = False
        self._writing = False  # lines taken from the queue and not yet written
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def write(self, line: str) -> None:
        """Queue one line (with its newline); drop it if the queue is full."""
        if len(self._pending) >= MAX_PENDING:
            with self._drop_lock:
                self._dropped += 1
                self.dropped_total += 1
            return
        self._pending.append(line)
        if self._thread is None:
            self._start()  # the new writer finds the line queued
            return
        if (self._parked or len(self._pending) >= FLUSH_AT) and not self._wakeup.is_set():
            self._wakeup.set()

    def flush(self, timeout: float) -> bool:
        """Write every queued line now, waiting up to ``timeout`` seconds for the
        stream to take them. Returns False when it did not take them in time."""
        deadline = time.monotonic() + timeout
        while self._pending or self._writing:
            if time.monotonic() >= deadline:
                return False
            self._wakeup.set()  # now, not at the writer's next round
            time.sleep(0.001)
        return True

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pods-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            # Parked before looking at the queue: a line queued after the look sees
            # the flag and wakes the writer; one queued before it is seen.
            self._parked = True
            if not self._pending:
                self._wakeup.wait()
            self._parked = False
            self._wakeup.clear()
            self._write_pending()
            # Lines keep coming, as a busy server logs: let them gather for a round.
            self._wakeup.wait(FLUSH_INTERVAL)
            self._wakeup.clear()
            self._write_pending()

    def _write_pending(self) -> None:
        self._writing = True
        lost = 0
        while self._pending:
            # Whole lines, at most PIPE_BUF bytes a write: the kernel keeps such a
            # write in one piece even when other workers write to the same pipe.
            batch = [self._pending.popleft()]
            size = _size(batch[0])
            while self._pending and size + (next_size := _size(self._pending[0])) <= select.PIPE_BUF:
                batch.append(self._pending.popleft())
                size += next_size
            if size > select.PIPE_BUF:  # one record longer than that: a traceback
                pieces = _whole_lines(batch[0])
            else:
                pieces = ["".join(batch)]
            for piece in pieces:
                lost += self._send(piece)
        with self._drop_lock:
            self.dropped_total += lost
            dropped, self._dropped = self._dropped + lost, 0
        if dropped and self._send(
            f"{utc_timestamp(time.time())} WARNING pods.log {dropped} log line(s) dropped"
            f" while the log stream was not being read or could not be written{WORKER}\n"
        ):
            with self._drop_lock:  # not written either: said once the stream works again
                self._dropped += dropped
        self._writing = False

    def _send(self, text: str) -> int:
        """Write ``text``; returns how many of its lines were lost (0 when all went)."""
        data = text.encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # closed, gone, full: what is left is lost, the server goes on
            return data.count(b"\n")
        return 0


def _size(text: str) -> int:
    """Bytes ``text`` takes once written (access lines are ASCII: one per character)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "backslashreplace"))


def _whole_lines(text: str) -> list[str]:
    """``text`` (one record of many lines: a traceback) in pieces of whole lines,
    each at most PIPE_BUF bytes when its lines are."""
    pieces, piece, size = [], "", 0
    for line in text.splitlines(keepends=True):
        if piece and size + _size(line) > select.PIPE_BUF:
            pieces.append(piece)
            piece, size = "", 0
        piece += line
        size += _size(line)
    return pieces + [piece]


stderr = LogStream(2)
# Lines still queued when the process exits are written first, unless the stream
# is stalled: then the exit waits this long at most. (Forked workers end with
# os._exit and flush themselves.)
atexit.register(stderr.flush, 2.0)


MAX_LINE = 2048  # bytes of one line; with PIPE_BUF at 4,096, one write each
CONTINUATION = "    "  # starts every line of a record after its first


def plain(text: str) -> str:
    """``text`` as a log line shows it: every character that is not printable (a
    newline, an escape sequence, a line separator, an invisible formatting
    character) written as \\xHH of its UTF-8 bytes, so that no text a client can
    put into a record starts a line of its own or commands a terminal; cut to
    MAX_LINE bytes."""
    if not text.isprintable():
        text = "".join(char if char.isprintable() else _escaped(char) for char in text)
    if len(text) > MAX_LINE // 4 and len(encoded := text.encode()) > MAX_LINE:
        text = encoded[:MAX_LINE - 5].decode("utf-8", "ignore") + "[cut]"
    return text


def _escaped(char: str) -> str:
    return "".join(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogatepass"))


class LogFormatter(logging.Formatter):
    """One entry per record: ``TIME LEVEL LOGGER MESSAGE`` on one line, the message
    ``plain`` (a newline in it is \\x0a), times as the access log writes
    them (UTC, milliseconds, ``Z``). A traceback follows on lines of its own, each
    plain and indented, so that none of them can be taken for an entry."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatTime(self, record, datefmt=None):
        return utc_timestamp(record.created)

    def format(self, record):
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        lines = [plain(self.formatMessage(record)) + WORKER]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for details in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if details:
                # A long traceback goes out in several writes: each line names its worker too.
                lines += [CONTINUATION + plain(line) + WORKER for line in details.splitlines()]
        return "\n".join(lines)


class LogStreamHandler(logging.Handler):
    """A logging handler that writes through a LogStream."""

    def __init__(self, stream: LogStream):
        super().__init__()
        self.stream = stream
        self.setFormatter(LogFormatter())

    def emit(self, record):
        try:
            self.stream.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
