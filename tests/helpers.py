"""What the tests share: the API's paths and a key, the app's storage, real server
processes (started as an operator starts them, always stopped), raw sockets, and
waiting for something to happen."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dbtools
import httpx

from pods.api.application import STORAGE_EXTENSION
from pods.storage import is_url

APP = str(Path(__file__).resolve().parent.parent / "app.py")

URL = "/agent/v0/pods"  # the pods collection; a pod is f"{URL}/{pod_id}"
KEYS_URL = "/agent/v0/api-keys"
# An operator's key (PODS_API_KEY, stored at start for the organization "default"):
# at least 32 visible ASCII characters.
KEY = "pods_test-key-0123456789abcdefghijklmnopqrstuvwxyz"
AUTH = {"Authorization": f"Bearer {KEY}"}


# -- the app and its databases -------------------------------------------------------------


def storage_of(app):
    """The app's storage (pods.storage), for tests that set up or read data directly."""
    return app.extensions[STORAGE_EXTENSION]


def new_database(backend: str, folder, request) -> str:
    """A new, empty database: a file in ``folder`` (SQLite) or a URL (PostgreSQL)."""
    if backend == "sqlite":
        return str(folder / "pods.db")
    return dbtools.new_schema(request.getfixturevalue("postgres"))


# -- real processes --------------------------------------------------------------------------


def run_app(*args, env=None, timeout=60, cwd=None):
    """Run ``python app.py ARGS`` to completion; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, APP, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


class Server:
    """``python app.py --port 0 --db DB ARGS``, started and answering ``/healthz``,
    with its output in files (a pipe nobody reads would fill with access-log lines
    and block the server).

    Use it as a context manager, or through the ``servers`` fixture: either way it
    is stopped (SIGTERM) at the end, and its exit status is then checked against
    ``expect_exit`` (0 unless told). A server the test killed (``kill()``) or
    stopped with another signal is not checked again.

    ``command`` replaces ``python app.py`` (an installed ``pods``, ``python
    pods.pyz``), run in the directory ``cwd``. ``stderr`` replaces the file for the
    standard error (``subprocess.PIPE``: read ``proc.stderr``); other keywords go to
    ``subprocess.Popen``."""

    def __init__(self, db_path, *args, env=None, workdir=None, command=None, cwd=None, expect_exit=0,
                 stderr=None, **popen):
        self.db = str(db_path)  # a file path, or a postgresql:// URL (then give ``workdir``)
        self.expect_exit = expect_exit
        self.checked = False  # the exit status needs no check: the test killed it, or saw it
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="pods-server-") if is_url(self.db) else Path(self.db).parent
        workdir = Path(workdir)
        self.stdout_path = workdir / f"server-{os.getpid()}-{time.monotonic_ns()}.out"
        self.stderr_path = None if stderr is not None else self.stdout_path.with_suffix(".err")
        with open(self.stdout_path, "w") as out, open(self.stderr_path or os.devnull, "w") as err:
            self.proc = subprocess.Popen(
                [*(command or [sys.executable, APP]), "--port", "0", "--db", self.db, *args],
                stdout=out,
                stderr=err if stderr is None else stderr,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                **popen,
            )
        try:
            self._wait_until_serving()
        except BaseException:
            self.kill()
            raise

    def _wait_until_serving(self):
        deadline = time.monotonic() + 30
        while not (m := re.search(r"serving on (http://\S+)", self.stdout)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self._stderr_or_none()}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        self.url = m.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])

        def answering():
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        if not wait_until(answering, timeout=max(deadline - time.monotonic(), 1), interval=0.02):
            raise RuntimeError("server did not answer")

    def _stderr_or_none(self):
        return self.stderr if self.stderr_path else None

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def bootstrap_token(self) -> str:
        return next(line for line in self.stdout.splitlines() if line.startswith("pods_"))

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        """Send ``sig`` (unless it has exited) and wait; returns the exit status. A
        server still running after ``timeout`` is killed, and that is an error."""
        if sig != signal.SIGTERM:
            self.checked = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not stop within {timeout} s of signal {sig}; killed") from None

    def kill(self) -> None:
        """kill -9; its exit status is not checked afterwards."""
        self.checked = True
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> int | None:
        """Stop the server, then check its exit status: what ``with`` and the
        ``servers`` fixture do at the end."""
        status = self.stop()
        if not self.checked:
            assert status == self.expect_exit, (
                f"the server exited {status}, not {self.expect_exit}: {self._stderr_or_none()}")
        return status

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None:
            self.close()
        else:  # the test's failure first; a server that will not stop is noted beside it
            try:
                self.stop()
            except AssertionError as problem:
                error.add_note(str(problem))
        return False


# -- raw sockets -----------------------------------------------------------------------------


def connect(port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to a server on this machine's loopback."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def port_of(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the server closes it (EOF or reset)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def exchange(where, data: bytes, *, half_close=False, timeout: float = 10) -> bytes:
    """Send bytes exactly as given (clients refuse some on purpose) to ``where`` (a
    port, or a server's URL), and return everything answered until the server
    closes. ``half_close``: say that nothing more will be sent (SHUT_WR) first."""
    address = port_of(where) if isinstance(where, str) else ("127.0.0.1", where)
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_to_end(s)


def split_answer(answer: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of a raw HTTP answer; (0, b"", b"") if there was none."""
    if not answer:
        return 0, b"", b""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes exactly as given; returns the status code and the body of the answer."""
    status, _, body = split_answer(exchange(url, request))
    return status, body


# -- waiting ----------------------------------------------------------------------------------


def wait_until(condition, timeout: float, interval: float = 0.05):
    """Call ``condition()`` until it returns something true, for at most ``timeout``
    seconds; returns its last result (false if the time ran out: assert on it)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return result
