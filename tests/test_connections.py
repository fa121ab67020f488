"""Connections: idle and slow clients cannot lock others out, one server per port,
no orphan workers, and a request already sent is answered at shutdown."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from live import APP, Server

URL = "/agent/v0/pods"
KEY = "pods_connections-test-key-0123456789abcdefghijkl"


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def timed_get(url: str) -> float:
    started = time.monotonic()
    r = httpx.get(url + "/healthz", timeout=30)
    assert r.json() == {"status": "ok"}
    return time.monotonic() - started


def test_idle_and_dribbling_connections_cannot_lock_a_client_out(tmp_path):
    """Hundreds of connections that send nothing and dozens that send a header byte
    every second, against a limit of 100 connections: a new client is answered
    within the header deadline, and every slow connection is closed at its deadline."""
    s = Server(tmp_path / "idle.db", "--header-timeout", "3", "--connection-limit", "100",
               env={"PODS_API_KEY": KEY})
    idle, dribblers, stop = [], [], threading.Event()
    try:
        dribblers = [connect(s.port) for _ in range(30)]

        def dribble():
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            for i in range(len(head)):
                for d in dribblers:
                    try:
                        d.send(head[i:i + 1])
                    except OSError:
                        pass
                if stop.wait(1):
                    return

        threading.Thread(target=dribble, daemon=True).start()
        idle = [connect(s.port) for _ in range(300)]
        assert timed_get(s.url) < 3 + 1.5
        # The dribblers never finish their heads: closed at the deadline, counted
        # from their opening, although each keeps sending.
        assert all(closed_by_server(d, within=5) for d in dribblers)
        # The idle ones were closed to make room, or at the same deadline.
        assert all(closed_by_server(i, within=5) for i in idle)
        assert timed_get(s.url) < 1
    finally:
        stop.set()
        for sock in idle + dribblers:
            sock.close()
        assert s.stop() == 0


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(tmp_path):
    s = Server(tmp_path / "ka.db", "--keepalive-timeout", "1", env={"PODS_API_KEY": KEY})
    try:
        with connect(s.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert closed_by_server(sock, within=5)
            assert 0.9 < time.monotonic() - started < 3.5
    finally:
        assert s.stop() == 0


def test_a_second_server_on_a_busy_port_fails_whatever_the_workers(tmp_path):
    first = Server(tmp_path / "first.db", "--workers", "2", env={"PODS_API_KEY": KEY})
    try:
        for workers in ("2", "1"):
            result = subprocess.run(
                [sys.executable, APP, "--port", str(first.port), "--workers", workers,
                 "--db", str(tmp_path / "second.db")],
                capture_output=True, text=True, timeout=30, env={**os.environ, "PODS_API_KEY": KEY},
            )
            assert result.returncode == 1
            assert result.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{first.port}: Address already in use"
        assert httpx.get(first.url + "/healthz").status_code == 200
    finally:
        assert first.stop() == 0


def worker_pids(parent: int) -> list[int]:
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_the_parent_stops_its_workers(tmp_path):
    s = Server(tmp_path / "orphans.db", "--workers", "2", env={"PODS_API_KEY": KEY})
    workers = worker_pids(s.proc.pid)
    assert len(workers) == 2
    s.kill()  # kill -9 of the parent
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)
    # The port is free again: a new server starts on it.
    again = Server(tmp_path / "orphans.db", "--port", str(s.port), env={"PODS_API_KEY": KEY})
    assert again.port == s.port
    assert again.stop() == 0


def test_a_request_sent_whole_before_sigterm_is_answered(tmp_path):
    """The request sits unread in the socket of an idle kept-alive connection when
    the signal arrives (the server is stopped while it is sent): it is answered
    and its pod stored, and the connection then closes."""
    s = Server(tmp_path / "pending.db", env={"PODS_API_KEY": KEY})
    body = b'{"name": "sent before the signal"}'
    request = (f"POST {URL} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with connect(s.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # now idle, kept alive
        s.proc.send_signal(signal.SIGSTOP)
        try:
            sock.sendall(request)
            s.proc.send_signal(signal.SIGTERM)
        finally:
            s.proc.send_signal(signal.SIGCONT)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in answer
    pod = httpx.Response(200, content=answer.partition(b"\r\n\r\n")[2]).json()
    assert s.stop() == 0
    import sqlite3

    conn = sqlite3.connect(s.db)
    try:
        assert conn.execute("SELECT name FROM pod WHERE pod_id = ?", (pod["pod_id"],)).fetchone() == (pod["name"],)
    finally:
        conn.close()


@pytest.mark.parametrize("limit", ["2000"])
def test_the_connection_limit_reaches_past_select(tmp_path, limit):
    """More than 1,024 connections at once: select() could not watch them."""
    s = Server(tmp_path / "many.db", "--connection-limit", limit, env={"PODS_API_KEY": KEY})
    socks = []
    try:
        socks = [connect(s.port) for _ in range(1100)]
        for sock in socks[-5:]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert timed_get(s.url) < 5
    finally:
        for sock in socks:
            sock.close()
        assert s.stop() == 0
