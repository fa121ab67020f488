"""Bytes to a request: waitress's parser, stricter about framing (RFC 9112), and
handing an oversized body to the app unread rather than refusing it itself."""

import re
import time

from waitress.parser import HTTPRequestParser, ParsingError
from waitress.utilities import Error, RequestEntityTooLarge, RequestHeaderFieldsTooLarge

from .admission import CHECK_KEY, PROCEED, Refusal
from .scheduler import Tenant

# The minor version of HTTP/1.2 ... HTTP/1.9: read as HTTP/1.1.
LATER_MINOR_VERSIONS = frozenset("23456789")
# A line that continues the one before (obs-fold, RFC 9112 section 5.2). Looked for
# in every request head: two `in` tests took two and a half times as long.
FOLDED_LINE = re.compile(rb"\r\n[ \t]")


class HttpVersionNotSupported(Error):
    code = 505
    reason = "HTTP Version Not Supported"


class URITooLong(Error):
    code = 414
    reason = "URI Too Long"


class PodsRequestParser(HTTPRequestParser):
    """waitress's request parser, stricter about framing, and different where a
    request ends its connection.

    Refused where waitress would guess (RFC 9112), each answered 400 and the
    connection closed: a request line without an HTTP version, a folded header
    line (section 5.2), Transfer-Encoding in HTTP/1.0, which waitress ignores
    and so reads the body as absent (section 6.1), and Content-Length together
    with Transfer-Encoding, a classic of request smuggling (section 6.1). A
    later HTTP/1 minor version (1.2 ... 1.9) is read as 1.1 (section 2.3);
    any other major version is 505. A request line that does not end within
    the limit on a request's head is 414 (RFC 9110, section 15.5.15: the target
    is what is too long), not waitress's 431.

    waitress answers a body over the limit itself, from the headers, and closes
    while the client is still writing: the kernel then resets the connection and
    many clients never read the answer. Here such a request is handed to the app
    at once, without its body and marked ``too_large`` (so the app answers it,
    after authentication, with its usual JSON 413). After it, and after any
    request waitress refuses (malformed, headers too large), the channel reads
    and drops what the client still sends (``PodsChannel.discard``) instead of
    leaving it unread.

    As soon as a head is in, ``Admission.at_head`` decides whose the request is,
    whether its rate limits let it through, and whether its body is worth
    reading: a request refused without it (429; no usable key on an endpoint that
    needs one) is handed over ``withheld``, like one too large, and its body is
    dropped as it comes; for a key this process does not know yet, reading stops
    until a worker has looked it up (``PodsChannel.hold``).
    """

    too_large = False
    version_refused = False
    # Set as the head is in (admission.Admission.at_head):
    withheld = False  # answered without its body, which is dropped as it comes
    tenant: Tenant | None = None  # whose it is
    key_hash: str | None = None  # of its bearer token, if it has one
    rate_headers: tuple[tuple[str, str], ...] = ()  # RateLimit-* for its answer, under a configured limit
    refusal: Refusal | None = None  # answered so, the app not run (429, or 503 once shed)
    head_done: float | None = None  # time.time() when its head was in: its body is due within --header-timeout
    error: Error | None  # waitress's, declared for the type checker
    read_at = 0.0  # time.perf_counter() when the request had arrived whole (or was refused)

    def __init__(self, adj, channel=None):
        super().__init__(adj)
        self.channel = channel

    def parse_header(self, header_plus):
        if FOLDED_LINE.search(header_plus) is not None:
            raise ParsingError("A header line may not be folded onto the next.")
        super().parse_header(header_plus)
        if self.version not in ("1.0", "1.1"):
            if self.version[:2] == "1." and self.version[2:] in LATER_MINOR_VERSIONS:
                self._parse_as_http_1_1(header_plus)
            elif not self.version:
                raise ParsingError("The request line has no HTTP version.")
            else:
                self.version_refused = True
                raise ParsingError("pods speaks HTTP/1.0 and HTTP/1.1.")
        if self.version == "1.0" and "TRANSFER_ENCODING" in self.headers:
            raise ParsingError("An HTTP/1.0 request may not have a Transfer-Encoding.")
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("A request may not have both Content-Length and Transfer-Encoding.")

    def _parse_as_http_1_1(self, header_plus):
        # Again, from scratch: waitress reads Transfer-Encoding and Expect in 1.1 only.
        line_end = header_plus.find(b"\r\n")
        request_line = header_plus[:line_end].rstrip()  # as waitress reads it
        self.headers = {}
        super().parse_header(request_line[:-1] + b"1" + header_plus[line_end:])

    def received(self, data):
        in_head = not self.headers_finished
        head_before = self.header_plus  # waitress keeps it as it was when it refuses a head
        consumed = super().received(data)
        channel = self.channel
        if self.completed and not self.read_at:
            self.read_at = time.perf_counter()  # from here, it waits for a thread (queue wait)
        if self.error is None:
            if not (in_head and self.headers_finished) or channel is None:
                return consumed
            self.head_done = time.time()
            verdict = channel.server.admission.at_head(self, channel.addr[0])
            channel.last_tenant = self.tenant
            if verdict == PROCEED or self.completed:
                return consumed
            if verdict == CHECK_KEY:  # reading stops until a worker has looked the key up
                channel.hold(self, rest=data[consumed:])
                return len(data)
            announced = self.withhold()
        else:
            announced = None
            if self.version_refused:
                self.error = HttpVersionNotSupported(self.error.body)
            elif isinstance(self.error, RequestHeaderFieldsTooLarge) and self._request_line_too_long(head_before + data):
                self.error = URITooLong(f"The request line exceeds {self.adj.max_request_header_size} bytes.")
            elif isinstance(self.error, RequestEntityTooLarge):
                self.error = None
                self.too_large = True
                announced = self.withhold()
                if channel is not None:  # whose it is, and its rate limits, as for any other
                    channel.server.admission.at_head(self, channel.addr[0])
        if channel is not None:
            channel.discard(already=len(data) - consumed, announced=announced)
        return len(data)  # the rest of this read is part of what is dropped

    def withhold(self) -> int | None:
        """Complete this request without its body (``withheld``, or ``too_large``),
        which is not read; returns how long the body said it is (None: unknown)."""
        self.withheld = True
        self.completed = True
        if not self.read_at:
            self.read_at = time.perf_counter()  # whole as far as the app goes: its wait for a thread starts
        self.expect_continue = False  # never invite the body with "100 Continue"
        self.close()  # the part of a chunked body buffered so far
        self.body_rcv = None
        return None if self.chunked else self.content_length

    def _request_line_too_long(self, head: bytes) -> bool:
        """Whether the request line of ``head`` (what came of a head past the limit)
        has not ended within the limit: then its target is what was too long."""
        line_end = head.lstrip().find(b"\n")
        return line_end < 0 or line_end >= self.adj.max_request_header_size

    @property
    def received_length(self) -> int:
        """At least the body's length: what it announced, or what came of it."""
        return max(self.content_length, self.body_bytes_received)
