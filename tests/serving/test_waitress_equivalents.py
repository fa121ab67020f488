"""What pods rewrote of waitress to spend less per request does what waitress's own
does: CoalescingTask writes each answer's head as Task.build_response_header does,
byte for byte (it spells each header name once per name, and the Date once a
second; RateLimit-* as the IETF draft spells them), and a connection's poll_flags
are what wasyncore.poll2 makes of its readable() and writable()."""

import itertools
from types import SimpleNamespace

import pytest
from waitress.task import Task

from pods.serving.task import CoalescingTask


def task(cls, version, connection, status, headers, content_length):
    channel = SimpleNamespace(server=SimpleNamespace(adj=SimpleNamespace(ident="pods")))
    request = SimpleNamespace(version=version, headers={"CONNECTION": connection} if connection else {},
                              rate_headers=(), refusal=None, key_hash=None, tenant=None)
    made = cls.__new__(cls)
    Task.__init__(made, channel, request)
    made.status, made.response_headers, made.content_length = status, list(headers), content_length
    made.start_time = 1_790_000_000.25
    return made


HEADER_SETS = [
    [("Content-Type", "application/json"), ("X-Request-Id", "abc")],
    [("content-type", "application/json"), ("Content-Length", "12"), ("www-authenticate", 'Bearer realm="x"')],
    [("Allow", "GET, HEAD"), ("Date", "Mon, 01 Jan 2026 00:00:00 GMT"), ("Server", "other")],
    [("Cache-Control", "no-store"), ("X-Request-Id", "r"), ("Retry-After", "1")],
]


@pytest.mark.parametrize("version, connection, status, headers, content_length", [
    (v, c, s, h, n) for v, c, s, h, n in itertools.product(
        ["1.0", "1.1"], ["", "close", "keep-alive"], ["200 OK", "204 No Content", "404 NOT FOUND"],
        HEADER_SETS, [None, 12])
])
def test_the_head_is_waitresss_byte_for_byte(version, connection, status, headers, content_length):
    ours = task(CoalescingTask, version, connection, status, headers, content_length)
    theirs = task(Task, version, connection, status, headers, content_length)
    assert ours._head() == Task.build_response_header(theirs)
    assert ours.close_on_finish == theirs.close_on_finish and ours.chunked_response == theirs.chunked_response


def test_ratelimit_headers_are_spelled_as_the_draft_spells_them():
    made = task(CoalescingTask, "1.1", "", "200 OK", [("Content-Length", "2")], 2)
    made.request.rate_headers = (("RateLimit-Limit", "5"), ("RateLimit-Remaining", "4"), ("RateLimit-Reset", "1"))
    head = made.build_response_header().decode()
    assert "\r\nRateLimit-Limit: 5\r\n" in head and "\r\nRateLimit-Remaining: 4\r\n" in head
    assert "\r\nRateLimit-Reset: 1\r\n" in head


def test_poll_flags_are_what_poll2_makes_of_readable_and_writable():
    import select

    from pods.serving.channel import PodsChannel

    read = select.POLLIN | select.POLLPRI
    states = itertools.product([False, True], [False, True], [False, True], [False, True], [0, 10],
                               [[], ["r"], ["r", "s"]], [False, True])
    checked = 0
    for will_close, close_when_flushed, discarding, holding, outbuf, requests, waiting in states:
        channel = PodsChannel.__new__(PodsChannel)
        channel.adj = SimpleNamespace(channel_request_lookahead=0)
        channel.will_close, channel.close_when_flushed = will_close, close_when_flushed
        channel.discarding, channel.holding, channel.total_outbufs_len = discarding, holding, outbuf
        channel.requests, channel.next_request_waiting = requests, waiting
        expected = (read if channel.readable() else 0) | (select.POLLOUT if channel.writable() else 0)
        assert channel.poll_flags() == expected, vars(channel)
        checked += 1
    assert checked == 192
