"""Connections: idle, slow and non-reading clients cannot lock others out, one
server per address and port, no orphan workers, and a request already sent is
answered at shutdown."""

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


def timed_get(url: str, timeout: float = 30) -> float:
    started = time.monotonic()
    r = httpx.get(url + "/healthz", timeout=timeout)
    assert r.json() == {"status": "ok"}
    return time.monotonic() - started


def non_reader(port: int) -> socket.socket:
    """A connection whose receive buffer is as small as the kernel allows, and
    which the test never reads: its answers pile up in the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything ``sock`` still receives until the server's close (EOF or reset)."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_idle_and_dribbling_connections_cannot_lock_a_client_out(tmp_path):
    """Hundreds of connections that send nothing and dozens that send a header byte
    every second, against a limit of 100 connections: a new client is answered
    within seconds, and every slow connection is closed at its deadline."""
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
        # 300 are queued ahead of the new client; 70 at a time are admitted, each given a
        # second to send its request before it may be closed for room, until the header
        # deadline (3 s) closes the first of them: usually 3-4 s, 5 on a busy machine.
        assert timed_get(s.url) < 3 + 3
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


@pytest.mark.parametrize("first_workers", ["1", "2"])
def test_a_second_server_on_a_busy_address_and_port_fails_whatever_the_workers(tmp_path, first_workers):
    first = Server(tmp_path / "first.db", "--workers", first_workers, env={"PODS_API_KEY": KEY})
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


def test_servers_on_two_addresses_may_share_a_port(tmp_path):
    first = Server(tmp_path / "first.db", "--workers", "2", env={"PODS_API_KEY": KEY})
    second = None
    try:
        second = Server(tmp_path / "second.db", "--host", "127.0.0.2", "--port", str(first.port), "--workers", "2",
                        env={"PODS_API_KEY": KEY})
        assert second.url == f"http://127.0.0.2:{first.port}"
        assert httpx.get(first.url + "/healthz").status_code == 200
    finally:
        if second is not None:
            assert second.stop() == 0
        assert first.stop() == 0


def test_no_name_held_by_someone_else_keeps_a_server_off_a_free_port(tmp_path):
    """Any local user can bind any abstract Unix socket name, so none may decide
    whether pods can listen: only what listens on the address and port does."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    squatters = []
    for name in (f"pods-port-{port}", f"pods-port-{os.getuid()}-127.0.0.1-{port}"):
        squatters.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        squatters[-1].bind("\0" + name)
    try:
        s = Server(tmp_path / "squat.db", "--port", str(port), env={"PODS_API_KEY": KEY})
        assert s.port == port
        assert s.stop() == 0
    finally:
        for squatter in squatters:
            squatter.close()


def worker_pids(parent: int) -> list[int]:
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid: int) -> bool:
    try:
        return process_state(pid) != "Z"
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


def wait_until_stopped(pid: int) -> None:
    deadline = time.monotonic() + 10
    while not process_state(pid) == "T":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0]


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
            wait_until_stopped(s.proc.pid)  # the signal takes effect a moment later
            sock.sendall(request)
            s.proc.send_signal(signal.SIGTERM)
        finally:
            s.proc.send_signal(signal.SIGCONT)
        answer = b""
        while chunk := sock.recv(65536):  # to the end: the server closes the connection
            answer += chunk
    stopped = s.stop()
    # The answer says "Connection: close" when the signal was seen before the request was
    # read; when the request was read first, the connection is closed right after it.
    assert answer.startswith(b"HTTP/1.1 200")
    pod = httpx.Response(200, content=answer.partition(b"\r\n\r\n")[2]).json()
    assert stopped == 0
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


# -- clients that do not read their answers ------------------------------------------


def test_a_connection_that_never_reads_holds_no_worker_and_is_closed_at_the_send_timeout(tmp_path):
    """65 pipelined lists of 100 big pods (about 40 MB of answers) in one send on a
    connection that never reads: the one worker thread goes on serving everyone
    else, and the connection is closed once its answer has not moved for
    --send-timeout."""
    s = Server(tmp_path / "unread.db", "--send-timeout", "1", env={"PODS_API_KEY": KEY})
    try:
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            wide = "\U0001F600" * 250  # 12 bytes of JSON each: about 6 KB of JSON per pod
            for i in range(100):
                assert c.post(URL, json={"name": wide, "client_id": f"{wide}{i}"}).status_code == 200
            answer_size = len(c.get(URL, params={"limit": 100}).content)
        assert answer_size > 500_000
        request = f"GET {URL}?limit=100 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
        with non_reader(s.port) as hostile:
            hostile.sendall(request * 65)
            for _ in range(5):
                assert timed_get(s.url, timeout=10) < 2
                time.sleep(0.2)
            time.sleep(4)  # past the send timeout: closed by now, with nothing read
            received = read_until_closed(hostile, within=10)
        # At most what the kernel's buffers held at the close: never all 65 answers.
        assert received.count(b"HTTP/1.1 200 OK") < 65
        started = time.monotonic()
    finally:
        assert s.stop() == 0
    assert time.monotonic() - started < 5


def test_connections_that_never_read_cannot_lock_anyone_out_at_the_connection_limit(tmp_path):
    """As many connections as the limit, each pipelining 2,000 unauthenticated
    requests and reading nothing: every one of them is busy, none can be closed to
    make room, but each is closed at its send timeout, and a new client is then
    answered."""
    s = Server(tmp_path / "flood.db", "--connection-limit", "10", "--send-timeout", "1",
               env={"PODS_API_KEY": KEY})
    hostile = []
    try:
        request = b"GET /agent/v0/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(10):
            hostile.append(non_reader(s.port))
            hostile[-1].sendall(request * 2000)
        time.sleep(0.5)
        assert timed_get(s.url, timeout=15) < 8
    finally:
        for sock in hostile:
            sock.close()
        assert s.stop() == 0


# -- the connection limit -----------------------------------------------------------------


def answered(sock: socket.socket) -> bool:
    """Send a GET on ``sock``; whether it is answered 200 (not closed or reset)."""
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock.recv(65536).startswith(b"HTTP/1.1 200")
    except (ConnectionResetError, BrokenPipeError):
        return False


def test_at_the_limit_nobody_is_closed_while_nobody_waits(tmp_path):
    s = Server(tmp_path / "full.db", "--connection-limit", "3", env={"PODS_API_KEY": KEY})
    socks = []
    try:
        socks = [connect(s.port) for _ in range(3)]
        time.sleep(2)  # idle, at the limit, and no fourth connection waiting
        assert [answered(sock) for sock in socks] == [True, True, True]
    finally:
        for sock in socks:
            sock.close()
        assert s.stop() == 0


def test_at_the_limit_a_new_connection_gets_its_chance_before_it_makes_room(tmp_path):
    """Two connections busy mid-request and a new third one fill the limit of 3; a
    fourth waits. The third, the only idle one, is not closed before it has sent
    its request; once it has been idle for a while, it makes room for the fourth."""
    s = Server(tmp_path / "chance.db", "--connection-limit", "3", env={"PODS_API_KEY": KEY})
    socks = []
    try:
        for _ in range(2):  # a body that has not finished arriving: busy
            socks.append(connect(s.port))
            socks[-1].sendall(b"POST /agent/v0/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        third = connect(s.port)
        time.sleep(0.3)
        fourth = connect(s.port)  # waits to be accepted
        socks += [third, fourth]
        assert answered(third)
        fourth.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        fourth.settimeout(8)
        assert fourth.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_by_server(third, within=1)  # closed to make room
    finally:
        for sock in socks:
            sock.close()
        assert s.stop() == 0
