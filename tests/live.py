"""A real server process, started as an operator would start it."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pods.storage import is_url

APP = str(Path(__file__).resolve().parent.parent / "app.py")


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
    """``python app.py --port 0 --db DB ARGS`` with its output in files (a pipe
    nobody reads would fill with access-log lines and block the server).

    ``command`` replaces ``python app.py`` (an installed ``pods``, ``python
    pods.pyz``), run in the directory ``cwd``."""

    def __init__(self, db_path, *args, env=None, workdir=None, command=None, cwd=None):
        self.db = str(db_path)  # a file path, or a postgresql:// URL (then give ``workdir``)
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="pods-server-") if is_url(self.db) else Path(self.db).parent
        workdir = Path(workdir)
        self.stdout_path = workdir / f"server-{os.getpid()}-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [*(command or [sys.executable, APP]), "--port", "0", "--db", self.db, *args],
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
                cwd=cwd,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"serving on (http://\S+)", self.stdout)
            if m:
                self.url = m.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                self._wait_until_answering()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr}")
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError("server did not start")

    def _wait_until_answering(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError("server did not answer")

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
        """Send ``sig`` and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes exactly as given (clients refuse some on purpose); returns the
    status code and the body of the answer."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
