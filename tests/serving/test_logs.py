"""The access log: one line per answer that no client can forge or break, with who
asked; and logging that never holds up an answer or a shutdown."""

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from helpers import KEY, URL, Server, exchange, run_app, storage_of, wait_until

from pods.api import accesslog, logstream
from pods.api.accesslog import client_address, escape, escape_text, parse_trusted_proxies

ACCESS_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO pods\.access "
    r"(?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}|-) (?P<ms>\d+\.\d)ms "
    r"request_id=(?P<rid>\S+) org=(?P<org>\S+) key=(?P<key>\S+) client=(?P<client>\S+)$"
)


def access_lines(stderr: str) -> list[dict]:
    return [m.groupdict() for m in map(ACCESS_LINE.match, stderr.splitlines()) if m]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("logs") / "logs.db", env={"PODS_API_KEY": KEY}) as s:
        yield s


# -- escaping -------------------------------------------------------------------------


def test_escape_leaves_visible_ascii_and_escapes_every_other_byte():
    for code in range(256):
        char = chr(code)
        expected = char if 0x21 <= code <= 0x7E and char != "\\" else f"\\x{code:02x}"
        assert escape(char) == expected
    assert escape("") == "-"
    assert escape_text("Zürich org") == "Z\\xc3\\xbcrich\\x20org"


HOSTILE_PATHS = {
    "newline": "/agent/v0/pods/x%0A2026-11-29T00:00:00.000Z%20INFO%20pods.access%20DELETE%20/agent/v0/pods/y%20200",
    "carriage-return": "/agent/v0/pods/x%0Dforged",
    "escape": "/agent/v0/pods/%1b%5b31mred%1b%5b0m",
    "nul": "/agent/v0/pods/a%00b",
    "del": "/agent/v0/pods/a%7Fb",
    "invalid-utf8": "/agent/v0/pods/%FF%FE%C0%AE",
    "backslash": "/agent/v0/pods/a%5Cx0a",
    "space": "/agent/v0/pods/a%20200%201.0ms",
    "long": "/agent/v0/pods/" + "a%0A" * 7_000,  # within the 32 KiB a head may take
}


@pytest.mark.live
def test_hostile_paths_each_make_exactly_one_escaped_line(server):
    ids = {}
    for name, path in HOSTILE_PATHS.items():
        ids[name] = f"hostile-{name}"
        request = (f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {ids[name]}\r\n"
                   f"Connection: close\r\n\r\n").encode()
        assert exchange(server.port, request).startswith(b"HTTP/1.1 40")  # 401, or 404: no such route
    # The same through an ordinary client, and raw bytes no client would send.
    r = httpx.get(server.url + HOSTILE_PATHS["newline"], headers={"X-Request-Id": "hostile-httpx"})
    assert r.status_code == 404
    # waitress refuses these itself; its answer is logged all the same.
    raw_bytes = b"GET /agent/v0/pods/\x1b[2J\xff\x7f HTTP/1.1\r\nHost: x\r\nX-Request-Id: hostile-raw\r\n\r\n"
    answer = exchange(server.port, raw_bytes)
    ids["raw"], ids["httpx"] = "hostile-raw", "hostile-httpx"
    wait_until(lambda: {line["rid"] for line in access_lines(server.stderr)} >= set(ids.values()), timeout=5)
    text = server.stderr
    # Nothing a client sent reaches the log unescaped: no control character, no byte
    # outside ASCII, one line per request and every line parseable.
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\U0010ffff]", text)
    assert all(ACCESS_LINE.match(line) or " pods.access " not in line for line in text.splitlines())
    by_id = {}
    for line in access_lines(text):
        by_id.setdefault(line["rid"], []).append(line)
    for rid in ids.values():
        assert len(by_id[rid]) == 1, rid
    assert by_id["hostile-newline"][0]["path"] == (
        "/agent/v0/pods/x\\x0a2026-11-29T00:00:00.000Z\\x20INFO\\x20pods.access\\x20DELETE"
        "\\x20/agent/v0/pods/y\\x20200"
    )
    assert by_id["hostile-escape"][0]["path"] == "/agent/v0/pods/\\x1b[31mred\\x1b[0m"
    assert by_id["hostile-invalid-utf8"][0]["path"] == "/agent/v0/pods/\\xff\\xfe\\xc0\\xae"
    assert by_id["hostile-backslash"][0]["path"] == "/agent/v0/pods/a\\x5cx0a"
    assert (by_id["hostile-raw"][0]["status"], by_id["hostile-raw"][0]["path"]) == ("400", "-")
    assert len(by_id["hostile-long"][0]["path"]) < 5000  # cut, so one line stays one write
    assert answer.startswith(b"HTTP/1.1 400")


def test_an_access_line_stays_far_below_pipe_buf_whatever_the_client_sends(monkeypatch, caplog):
    """Every field a client controls is cut once escaped: a line is one write, which
    the kernel keeps whole when workers share a pipe. (Before: a 20,000-character
    method was logged whole, and a path cut to 1,024 characters grew to 4,096
    once escaped; with 2 workers, 21 of 1,200 such lines came out intact.)"""
    written = []
    monkeypatch.setattr(logstream.stderr, "write", written.append)
    caplog.set_level("INFO", logger="pods.access")

    class Caller:
        org_name = "\U0001F600\n" * 127
        key_id = "3fee6523bbdc6633"

    accesslog.write_line("A" * 262_144, "\n" * 300_000, 405, time.perf_counter(), "r" * 128, Caller(),
                         client="fe80::1%" + "x" * 10_000)
    [line] = written
    assert len(line.encode()) < 2048
    fields = ACCESS_LINE.match(line.rstrip("\n")).groupdict()
    assert fields["method"] == "A" * accesslog.MAX_METHOD
    assert fields["path"] == "\\x0a" * (accesslog.MAX_PATH // 4)
    assert fields["org"].startswith("\\xf0\\x9f\\x98\\x80\\x0a") and len(fields["org"]) <= accesslog.MAX_ORG
    assert len(fields["client"]) <= accesslog.MAX_CLIENT


@pytest.mark.parametrize("unsafe", [" ", "\\", "\x7f", "\n", "\xe9", "\u2028", ""])
@pytest.mark.parametrize("where", ["method", "path", "rid", "client", "org"])
def test_each_field_is_escaped_alone_whichever_holds_what_needs_it(monkeypatch, caplog, where, unsafe):
    """A line is checked for anything to escape in one test of all its fields; when
    one field holds something, that field is escaped (or "-" when empty) and the
    others are written as they came."""
    written = []
    monkeypatch.setattr(logstream.stderr, "write", written.append)
    caplog.set_level("INFO", logger="pods.access")
    given = {"method": "GET", "path": "/agent/v0/pods", "rid": "r-1", "client": "10.0.0.1", "org": "acme"}
    given[where] = unsafe if unsafe == "" else given[where] + unsafe

    class Caller:
        org_name = given["org"]
        key_id = "3fee6523bbdc6633"

    accesslog.write_line(given["method"], given["path"], 200, time.perf_counter(), given["rid"], Caller(),
                         client=given["client"])
    [line] = written
    logged = ACCESS_LINE.match(line.rstrip("\n")).groupdict()
    expected = {name: escape(value) for name, value in given.items()}
    expected["org"] = escape_text(given["org"])
    assert {name: logged[name] for name in given} == expected
    assert logged[where] != given[where] or unsafe == ""


def test_a_cut_never_splits_an_escape():
    for shift in range(4):
        cut = accesslog.field("a" * shift + "\n" * 100, 20)
        assert cut == "a" * shift + "\\x0a" * ((20 - shift) // 4)
    assert accesslog.field("GET", 32) == "GET"
    assert accesslog.field("", 32) == "-"


@pytest.mark.live
def test_a_long_method_is_logged_cut_on_a_live_server(server):
    method = b"A" * 20_000
    answer = exchange(server.port, method + b" /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: long-method\r\n"
                        b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405")
    lines = wait_until(lambda: [x for x in access_lines(server.stderr) if x["rid"] == "long-method"], timeout=5)
    assert lines
    assert lines[0]["method"] == "A" * accesslog.MAX_METHOD


@pytest.mark.live
def test_answers_waitress_gives_itself_are_logged_with_their_status(server):
    before = len(access_lines(server.stderr))
    assert exchange(server.port, b"GARBAGE\x1b[31m\r\n\r\n").startswith(b"HTTP/1.0 400")
    big_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    assert exchange(server.port, big_head).startswith(b"HTTP/1.0 431")
    wait_until(lambda: len(access_lines(server.stderr)) >= before + 2, timeout=5)
    new = access_lines(server.stderr)[before:]
    assert [(x["status"], x["org"], x["key"], x["client"]) for x in new] == [
        ("400", "-", "-", "127.0.0.1"),
        ("431", "-", "-", "127.0.0.1"),
    ]
    assert new[1]["method"] == new[1]["path"] == "-"


@pytest.mark.live
def test_lines_name_the_key_and_the_client_never_the_token(server):
    r = httpx.get(server.url + URL, headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "who-asked"})
    assert r.status_code == 200
    time.sleep(0.3)
    line = next(x for x in access_lines(server.stderr) if x["rid"] == "who-asked")
    key_id = server_key_id(server)
    assert (line["org"], line["key"], line["client"]) == ("default", key_id, "127.0.0.1")
    assert KEY not in server.stderr


def server_key_id(server) -> str:
    import sqlite3

    conn = sqlite3.connect(server.db)
    try:
        return conn.execute("SELECT key_id FROM api_key").fetchone()[0]
    finally:
        conn.close()


# -- the client's address behind a reverse proxy -------------------------------------------


def test_an_ipv4_mapped_address_is_logged_as_the_ipv4_address():
    trusted = parse_trusted_proxies("10.0.0.1")
    assert client_address("10.0.0.1", "::ffff:1.2.3.4", trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", "6.6.6.6, ::FFFF:203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("10.0.0.1", "2001:db8::1", trusted) == "2001:db8::1"
    # A client of a server listening on "::", and a proxy reaching it that way.
    assert client_address("::ffff:198.51.100.7", None, ()) == "198.51.100.7"
    assert client_address("::ffff:10.0.0.1", "1.2.3.4", trusted) == "1.2.3.4"


def test_client_address_comes_from_a_trusted_proxy_only():
    trusted = parse_trusted_proxies("10.0.0.1, 192.168.0.0/24")
    assert client_address("10.0.0.1", "6.6.6.6, 203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("192.168.0.77", "203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("10.0.0.2", "203.0.113.9", trusted) == "10.0.0.2"  # not the proxy
    assert client_address("10.0.0.1", "203.0.113.9", ()) == "10.0.0.1"  # no proxy trusted
    assert client_address("10.0.0.1", "not-an-address", trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", None, trusted) == "10.0.0.1"
    with pytest.raises(ValueError):
        parse_trusted_proxies("proxy.example")


@pytest.mark.live
@pytest.mark.parametrize("trusted,expected", [(None, "127.0.0.1"), ("127.0.0.1", "198.51.100.4"),
                                              ("10.9.9.9", "127.0.0.1")])
def test_trusted_proxy_flag_on_a_live_server(tmp_path, trusted, expected):
    args = ("--trusted-proxy", trusted) if trusted else ()
    with Server(tmp_path / "proxy.db", *args, env={"PODS_API_KEY": KEY}) as s:
        r = httpx.get(s.url + URL, headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "proxied",
                                            "X-Forwarded-For": "6.6.6.6, 198.51.100.4"})
        assert r.status_code == 200
    line = next(x for x in access_lines(s.stderr) if x["rid"] == "proxied")
    assert line["client"] == expected


@pytest.mark.live
def test_a_bad_trusted_proxy_is_refused_at_start(tmp_path):
    result = run_app("--trusted-proxy", "nonsense", "--db", str(tmp_path / "x.db"), timeout=30)
    assert result.returncode == 2
    assert "--trusted-proxy" in result.stderr


# -- a log nobody reads ---------------------------------------------------------------------


@pytest.mark.live
def test_a_stderr_nobody_reads_never_stops_answers_or_shutdown(tmp_path):
    """stderr is a pipe that nobody reads during a burst far larger than the pipe
    holds: every request is answered; once the pipe is read again, the log says
    how many lines it dropped, and lines written plus lines dropped are every
    request. Then a SIGTERM with the pipe full again stops the server."""
    with Server(tmp_path / "stalled.db", env={"PODS_API_KEY": KEY}, stderr=subprocess.PIPE) as s, s.proc.stderr:
        url, proc = s.url, s.proc
        requests = 6000  # about a megabyte of access lines; the pipe holds 64 KiB
        started = time.monotonic()
        with httpx.Client(base_url=url, timeout=10, headers={"X-Request-Id": "burst"}) as c:
            statuses = {c.get("/healthz").status_code for _ in range(requests)}
        assert statuses == {200}
        assert time.monotonic() - started < 60
        # Read the pipe again: the backlog drains, then the notice of what was lost.
        collected = []
        reader = threading.Thread(target=lambda: collected.append(proc.stderr.read()))
        reader.start()
        assert httpx.get(url + "/healthz", headers={"X-Request-Id": "after"}).status_code == 200
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        reader.join(timeout=10)
    text = collected[0].decode()
    dropped = sum(int(n) for n in re.findall(r"WARNING pods\.log (\d+) log line\(s\) dropped", text))
    logged = sum(1 for line in access_lines(text) if line["rid"] in ("burst", "after"))
    assert dropped > 0
    assert logged + dropped == requests + 1  # every answer was logged or counted as dropped
    assert "stopped" in text


@pytest.mark.live
def test_sigterm_with_a_full_log_pipe_stops_the_server(tmp_path):
    with Server(tmp_path / "stuck.db", env={"PODS_API_KEY": KEY}, stderr=subprocess.PIPE) as s, s.proc.stderr:
        url, proc = s.url, s.proc
        with httpx.Client(base_url=url, timeout=10) as c:
            for _ in range(3000):
                assert c.get("/healthz").status_code == 200
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 8


@pytest.mark.live
def test_a_closed_stderr_loses_the_log_not_the_answers_nor_the_database(tmp_path):
    """Started with ``2>&-``: requests are answered, and no log line lands in a file
    or socket that took descriptor 2's place."""
    with Server(tmp_path / "closed.db", env={"PODS_API_KEY": KEY}, preexec_fn=lambda: os.close(2)) as s:
        url, proc = s.url, s.proc
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
            made = [c.post(URL, json={"name": f"kept {i}"}).json() for i in range(20)]
            assert [c.get(f"{URL}/{p['pod_id']}").json() for p in made] == made
        assert os.readlink(f"/proc/{proc.pid}/fd/2") == os.devnull
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    for path in tmp_path.glob("closed.db*"):
        assert b"pods.access" not in path.read_bytes()


# -- every log record, not only access lines ------------------------------------------------


ENTRY = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ \S+ ")
FORGED = "/agent/v0/pods/x%0A2026-11-29T00:00:00.000Z%20INFO%20pods.access%20FORGED"


def read_stream(fd: int) -> str:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20).decode()
    except BlockingIOError:
        return ""


@pytest.fixture
def log_pipe():
    """Every log record of the process, formatted as the server formats them, into
    a pipe: yields a function that returns what was written so far."""
    import logging

    read_end, write_end = os.pipe()
    handler = logstream.LogStreamHandler(logstream.LogStream(write_end))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        def written() -> str:
            assert handler.stream.flush(timeout=5)
            return read_stream(read_end)

        yield written
    finally:
        root.removeHandler(handler)
        os.close(read_end)
        os.close(write_end)


def test_an_unhandled_exception_logs_one_entry_naming_the_request_safely(app, client, headers, monkeypatch, log_pipe):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def broken(*args):
        raise RuntimeError("secret internals\n2026-11-29T00:00:00.000Z INFO pods.access FORGED TOO")

    monkeypatch.setattr(storage_of(app), "caller_for_key_hash", broken)
    r = client.get(FORGED, headers={**headers, "X-Request-Id": "the-500"})
    assert r.status_code == 500
    lines = log_pipe().splitlines()
    entries = [line for line in lines if ENTRY.match(line)]
    assert len(entries) == 1
    assert entries[0].endswith(
        " ERROR pods.app unhandled exception in GET /agent/v0/pods/x\\x0a2026-11-29T00:00:00.000Z"
        "\\x20INFO\\x20pods.access\\x20FORGED request_id=the-500"
    )
    # The traceback: every other line, indented, and nothing can start a line of its own.
    assert lines[0] == entries[0] and len(lines) > 3
    assert all(line.startswith("    ") for line in lines[1:])
    assert "    RuntimeError: secret internals" in lines  # logged for the operator


def test_the_formatter_escapes_every_line_of_every_record():
    import logging

    record = logging.LogRecord("pods.x", logging.WARNING, __file__, 1, "a %s b",
                               ("\n\r\t\x1b[2J\u2028\x85\u202e\x7f",), None)
    formatter = logstream.LogFormatter()
    assert formatter.format(record).split(" ", 1)[1] == (
        "WARNING pods.x a \\x0a\\x0d\\x09\\x1b[2J\\xe2\\x80\\xa8\\xc2\\x85\\xe2\\x80\\xae\\x7f b"
    )
    # Printable text stays as it is: "migrating schema 1 → 2", "Zürich".
    readable = logging.LogRecord("pods.x", logging.INFO, __file__, 1, "1 → 2 Zürich", (), None)
    assert formatter.format(readable).endswith(" INFO pods.x 1 → 2 Zürich")
    for char in ("y", "é"):
        long = logging.LogRecord("pods.x", logging.INFO, __file__, 1, char * 10_000, (), None)
        line = formatter.format(long)
        assert logstream.MAX_LINE - 5 <= len(line.encode()) <= logstream.MAX_LINE and line.endswith("[cut]")


@pytest.mark.parametrize("failing", ["/dev/full", "broken pipe"])
def test_lines_that_cannot_be_written_are_counted_as_dropped(failing):
    """ENOSPC or EPIPE: the lines are lost, and once writing works again the log
    says how many."""
    if failing == "/dev/full":
        fd = os.open("/dev/full", os.O_WRONLY)
    else:
        read_end, fd = os.pipe()
        os.close(read_end)
    stream = logstream.LogStream(fd)
    try:
        for i in range(3):
            stream.write(f"line {i}\n")
            assert stream.flush(timeout=5)  # three writes, each failing
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)  # the stream works again
        os.close(write_end)
        stream.write("after\n")
        assert stream.flush(timeout=5)
        text = read_stream(read_end)
        os.close(read_end)
    finally:
        os.close(fd)
    assert text.startswith("after\n")
    assert re.search(r" WARNING pods\.log 3 log line\(s\) dropped ", text)


def test_a_record_longer_than_pipe_buf_is_written_in_whole_lines():
    read_end, write_end = os.pipe()
    stream = logstream.LogStream(write_end)
    lines = [f"{i:04d} " + "t" * 1000 for i in range(20)]
    writes = []
    real_write = os.write

    def recording_write(fd, data):
        if fd == write_end:
            writes.append(data)
        return real_write(fd, data)

    try:
        os.write = recording_write
        stream.write("\n".join(lines) + "\n")
        assert stream.flush(timeout=5)
    finally:
        os.write = real_write
        os.close(write_end)
    assert read_stream(read_end).splitlines() == lines
    os.close(read_end)
    assert len(writes) > 1
    assert all(len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in writes)


@pytest.fixture
def recorded_stream(monkeypatch):
    """A LogStream into a pipe, with every write(2) it makes recorded: yields the
    stream and the list of the writes."""
    read_end, write_end = os.pipe()
    stream = logstream.LogStream(write_end)
    writes = []
    real_write = os.write

    def recording_write(fd, data):
        if fd == write_end:
            writes.append(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    try:
        yield stream, writes
    finally:
        monkeypatch.undo()
        os.close(write_end)
        os.close(read_end)


def written_and_waiting(stream, writes, expected: list[bytes]) -> bool:
    """``expected`` written, and the writer done with its writes (waiting, for its
    round or for a line): lines queued from then on find it waiting."""
    return writes == expected and not stream._writing


def test_a_line_to_an_idle_writer_is_written_at_once_and_lines_behind_it_wait_for_its_round(
        recorded_stream, monkeypatch):
    """The first line wakes the writer; lines queued while it is busy wake nobody
    (a wake per line was a thread hand-off per request) and go out together, at
    its next round or at a flush."""
    stream, writes = recorded_stream
    monkeypatch.setattr(logstream, "FLUSH_INTERVAL", 60.0)  # no round during the test
    stream.write("first\n")
    assert wait_until(lambda: written_and_waiting(stream, writes, [b"first\n"]), timeout=5)
    for i in range(10):
        stream.write(f"line {i}\n")
    time.sleep(0.3)
    assert writes == [b"first\n"]  # queued, not written, and the writer not woken
    assert stream.flush(timeout=5)
    assert writes == [b"first\n", "".join(f"line {i}\n" for i in range(10)).encode()]


def test_a_busy_writer_writes_at_each_round(recorded_stream, monkeypatch):
    stream, writes = recorded_stream
    monkeypatch.setattr(logstream, "FLUSH_INTERVAL", 2.0)
    stream.write("first\n")
    assert wait_until(lambda: written_and_waiting(stream, writes, [b"first\n"]), timeout=5)
    stream.write("second\n")
    time.sleep(0.2)
    assert len(writes) == 1  # not as it was queued
    assert wait_until(lambda: len(writes) == 2, timeout=5)  # at the round, with no flush
    assert writes[1] == b"second\n"


def test_flush_at_lines_queued_wake_the_writer_before_its_round(recorded_stream, monkeypatch):
    stream, writes = recorded_stream
    monkeypatch.setattr(logstream, "FLUSH_INTERVAL", 60.0)
    monkeypatch.setattr(logstream, "FLUSH_AT", 5)
    stream.write("first\n")
    assert wait_until(lambda: written_and_waiting(stream, writes, [b"first\n"]), timeout=5)
    for i in range(4):
        stream.write(f"line {i}\n")
    time.sleep(0.3)
    assert len(writes) == 1
    stream.write("line 4\n")  # the fifth queued
    assert wait_until(lambda: len(writes) == 2, timeout=5)
    assert writes[1] == "".join(f"line {i}\n" for i in range(5)).encode()


@pytest.mark.live
def test_every_line_queued_is_written_in_order_at_a_clean_exit(tmp_path):
    """Lines still waiting for the writer's round when the process exits are written
    then (atexit), at once, whole and in order."""
    code = ("from pods.api import logstream\n"
            "logstream.FLUSH_INTERVAL = 60.0\n"
            "for i in range(3000): logstream.stderr.write(f'line {i:04d}\\n')\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert done.returncode == 0
    assert time.monotonic() - started < 10  # not waiting for the 60 s round
    assert done.stderr.decode().splitlines() == [f"line {i:04d}" for i in range(3000)]
