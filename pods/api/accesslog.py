"""One log line per answer, and a request id on every response.

    2026-11-29T04:38:45.900Z INFO pods.access GET /agent/v0/pods 200 1.9ms request_id=4b1f... org=acme key=3fee6523bbdc6633 client=127.0.0.1

With --workers above 1, `` worker=N`` ends the line (``logstream.WORKER``).

Organization and key id are the authenticated caller's ("-" when there is none);
the token never appears. Query strings are left out: they carry page tokens.
Every field a client can influence is escaped (``escape``), so that no request can
break a line in two, forge another, or send escape sequences to a terminal, and
then cut (``field``), so that a line stays far below PIPE_BUF whatever was sent:
the kernel keeps such a write whole when several workers share a pipe.

A WSGI middleware rather than Flask request hooks: it also times and logs what
Flask's own error handling answers, and it costs a fraction of the hooks (each
hook call goes through Flask's sync/async dispatch). The ``pods.access`` logger's
level decides whether lines are written, but each line is formatted here and
queued straight to the log stream, in the same format as every other log line: a
LogRecord and its formatter cost 8% of a one-pod GET. Answers that waitress gives
itself (a malformed request, headers too large) are logged by ``pods.server``
through ``write_line``.
"""

import ipaddress
import logging
import random
import re
import time

from . import logstream

log = logging.getLogger("pods.access")

# Set by authentication to the caller (access.Caller: org_name, key_id ...).
CALLER_ENVIRON_KEY = "pods.caller"
# Set here, for the log line of an unhandled error (errors.log_unhandled).
REQUEST_ID_ENVIRON_KEY = "pods.request_id"
# Set by routing (application.py) to the rule the request matched, as Flask writes
# it ("/agent/v0/pods/<pod_id>"), or by HttpRules to HTTP_ERROR_ROUTE.
ROUTE_ENVIRON_KEY = "pods.route"

# The route of an answer, for whoever counts answers (``AccessLog``'s ``observe``):
# a route template ("/agent/v0/pods/{pod_id}"), never the path as sent.
UNMATCHED_ROUTE = "unmatched"  # no route has this path (404), or not this method (405)
HTTP_ERROR_ROUTE = "http_error"  # refused before routing: malformed, head too large, bad Host
REFUSED_ROUTE = "refused"  # answered from the head, never run: 429 over a rate limit, 503 shed

# An incoming X-Request-Id is honoured when it is short and plain enough to be
# logged and echoed safely; otherwise the server makes its own.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Everything but visible ASCII, and the backslash that starts an escape.
UNSAFE = re.compile(r"[^\x21-\x5b\x5d-\x7e]")
# Characters each field may take once escaped: with the rest, a line is at most
# about 1,900 bytes, whatever the client sent (PIPE_BUF is 4,096).
MAX_METHOD = 32  # no method a route has is longer; waitress allows 256 KiB of one
MAX_PATH = 1024
MAX_REQUEST_ID = 128  # as REQUEST_ID allows
MAX_ORG = 512  # a 255-character name, escaped where it is not ASCII
MAX_CLIENT = 64  # an IPv6 address with room to spare


def _hex(match: re.Match) -> str:
    char = match.group()
    raw = char.encode("latin-1") if char <= "\xff" else char.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{b:02x}" for b in raw)


def escape(text: str) -> str:
    """``text`` with every byte outside visible ASCII, and the backslash, written
    as ``\\xHH`` (nginx's convention). ``text`` holds one character per byte, as
    WSGI gives the path; use ``escape_text`` for other text. Empty is ``-``."""
    if not text:
        return "-"
    if UNSAFE.search(text) is None:  # the usual case: nothing to do
        return text
    return UNSAFE.sub(_hex, text)


def field(text: str, limit: int) -> str:
    """``escape(text)``, cut to at most ``limit`` characters, never inside an escape."""
    if len(text) <= limit and text and UNSAFE.search(text) is None:  # the usual case
        return text
    escaped = escape(text[:limit])  # no character escapes to fewer than one
    if len(escaped) <= limit:
        return escaped
    cut = escaped[:limit]
    partial = cut.find("\\", limit - 3)  # a backslash always starts "\xHH"
    return cut if partial == -1 else cut[:partial]


def escape_text(text: str) -> str:
    """``escape`` for any text: its UTF-8 bytes, escaped."""
    return escape(_utf8_bytes(text))


def _utf8_bytes(text: str) -> str:
    """The UTF-8 bytes of ``text``, one character each, as ``escape`` takes them."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def request_id_for(incoming: str) -> str:
    """The client's X-Request-Id when it is plain enough, else a new one."""
    return incoming if REQUEST_ID.fullmatch(incoming) else new_request_id()


def new_request_id() -> str:
    # 128 random bits. Not a secret, so not os.urandom: that is a system call, and
    # each one hands the GIL to the event loop mid-request. random is reseeded in
    # every forked worker.
    return f"{random.getrandbits(128):032x}"


def parse_trusted_proxies(spec: str) -> tuple:
    """``--trusted-proxy``: comma-separated addresses or networks (CIDR).

    :raise ValueError: one of them is neither.
    """
    return tuple(ipaddress.ip_network(part.strip()) for part in spec.split(",") if part.strip())


def client_address(peer: str, forwarded_for: str | None, trusted: tuple) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the
    last address in the X-Forwarded-For it sent (the one that proxy appended; the
    ones before it are the client's own claims). Never from anyone else's header."""
    if peer[:7] == "::ffff:":  # an IPv4 client of a server listening on "::"
        peer = _unmapped(peer)
    if not trusted or not forwarded_for:
        return peer
    try:
        if not any(ipaddress.ip_address(peer) in net for net in trusted):
            return peer
        return _unmapped(forwarded_for.rsplit(",", 1)[-1].strip())
    except ValueError:  # a peer on a Unix socket, or a malformed header: keep the peer
        return peer


def _unmapped(address: str) -> str:
    """``address`` as its usual text, an IPv4-mapped IPv6 address as the IPv4
    address it maps (``::ffff:1.2.3.4`` is 1.2.3.4, not ``::ffff:102:304``).

    :raise ValueError: not an IP address.
    """
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return str(mapped or parsed)


def write_line(method, path, status, started, request_id, caller=None, client="-") -> None:
    """Queue one access line; ``started`` is the request's ``time.perf_counter()``."""
    if not log.isEnabledFor(logging.INFO):
        return
    org = "-" if caller is None else caller.org_name
    if not (method and path and request_id and client and org
            and len(method) <= MAX_METHOD and len(path) <= MAX_PATH and len(request_id) <= MAX_REQUEST_ID
            and len(client) <= MAX_CLIENT and len(org) <= MAX_ORG
            and (joined := f"{method}{path}{request_id}{client}{org}").isascii() and joined.isprintable()
            and " " not in joined and "\\" not in joined):
        # Something to escape or cut (UNSAFE finds something). The usual line has nothing:
        # one test for all its fields, by str's scans, faster than the pattern's.
        method, path, request_id, client = (field(method, MAX_METHOD), field(path, MAX_PATH),
                                            field(request_id, MAX_REQUEST_ID), field(client, MAX_CLIENT))
        org = field(_utf8_bytes(org), MAX_ORG)
    logstream.stderr.write(
        f"{logstream.utc_timestamp(time.time())} INFO {log.name} {method} {path} {status}"
        f" {(time.perf_counter() - started) * 1000:.1f}ms request_id={request_id} org={org}"
        f" key={'-' if caller is None else caller.key_id} client={client}{logstream.WORKER}\n"
    )


_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
_templates: dict[str, str] = {}  # Flask rule -> its template; as many as the app has rules


def route_of(environ) -> str:
    """The route template an answer was for, such as "/agent/v0/pods/{pod_id}", or
    UNMATCHED_ROUTE, or HTTP_ERROR_ROUTE: always one of a fixed set, whatever the
    path sent."""
    rule = environ.get(ROUTE_ENVIRON_KEY)
    if rule is None:
        return UNMATCHED_ROUTE
    template = _templates.get(rule)
    if template is None:
        template = _templates[rule] = _RULE_VARIABLE.sub(r"{\1}", rule)
    return template


class AccessLog:
    """Logs each answer (``write_line``) and, given ``observe``, reports it:
    ``observe(method, route, status, seconds, caller)`` with the method as sent,
    ``route_of`` the request, the status as three digits ("-" when the app never
    started an answer), the app's time and the authenticated caller (or None)."""

    def __init__(self, wsgi_app, trusted_proxies: tuple = (), observe=None):
        self.wsgi_app = wsgi_app
        self.trusted_proxies = trusted_proxies
        self.observe = observe

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        request_id = environ[REQUEST_ID_ENVIRON_KEY] = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        client = environ["REMOTE_ADDR"] = client_address(
            environ.get("REMOTE_ADDR", "-"), environ.get("HTTP_X_FORWARDED_FOR"), self.trusted_proxies
        )
        status = "-"

        def start_with_id(status_line, headers, exc_info=None):
            nonlocal status
            status = status_line[:3]
            headers.append(("X-Request-Id", request_id))
            return start_response(status_line, headers, exc_info)

        try:
            return self.wsgi_app(environ, start_with_id)
        finally:
            method, caller = environ.get("REQUEST_METHOD", "-"), environ.get(CALLER_ENVIRON_KEY)
            write_line(method, environ.get("PATH_INFO", ""), status, started, request_id, caller, client)
            if self.observe is not None:
                self.observe(method, route_of(environ), status, time.perf_counter() - started, caller)
