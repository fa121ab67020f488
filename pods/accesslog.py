"""One log line per answer, and a request id on every response.

    2026-11-29T04:38:45.900Z INFO pods.access GET /agent/v0/pods 200 1.9ms request_id=4b1f... org=acme key=3fee6523bbdc6633 client=127.0.0.1

Organization and key id are the authenticated caller's ("-" when there is none);
the token never appears. Query strings are left out: they carry page tokens.
Every field a client can influence is escaped (``escape``), so that no request can
break a line in two, forge another, or send escape sequences to a terminal.

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

# An incoming X-Request-Id is honoured when it is short and plain enough to be
# logged and echoed safely; otherwise the server makes its own.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Everything but visible ASCII, and the backslash that starts an escape.
UNSAFE = re.compile(r"[^\x21-\x5b\x5d-\x7e]")
# A path is cut to this many characters (before escaping): one line stays one
# write, which the kernel keeps whole even when several workers share a pipe.
MAX_PATH = 1024


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


def escape_text(text: str) -> str:
    """``escape`` for any text: its UTF-8 bytes, escaped."""
    return escape(text.encode("utf-8", "surrogateescape").decode("latin-1"))


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
    if not trusted or not forwarded_for:
        return peer
    try:
        if not any(ipaddress.ip_address(peer) in net for net in trusted):
            return peer
        return str(ipaddress.ip_address(forwarded_for.rsplit(",", 1)[-1].strip()))
    except ValueError:  # a peer on a Unix socket, or a malformed header: keep the peer
        return peer


def write_line(method, path, status, started, request_id, caller=None, client="-") -> None:
    """Queue one access line; ``started`` is the request's ``time.perf_counter()``."""
    if not log.isEnabledFor(logging.INFO):
        return
    org, key = (escape_text(caller.org_name), caller.key_id) if caller is not None else ("-", "-")
    logstream.stderr.write(
        f"{logstream.utc_timestamp(time.time())} INFO {log.name} {escape(method)} {escape(path[:MAX_PATH])}"
        f" {status} {(time.perf_counter() - started) * 1000:.1f}ms request_id={escape(request_id)}"
        f" org={org} key={key} client={escape(client)}\n"
    )


class AccessLog:
    def __init__(self, wsgi_app, trusted_proxies: tuple = ()):
        self.wsgi_app = wsgi_app
        self.trusted_proxies = trusted_proxies

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
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
            write_line(
                environ.get("REQUEST_METHOD", "-"),
                environ.get("PATH_INFO", ""),
                status,
                started,
                request_id,
                environ.get(CALLER_ENVIRON_KEY),
                client,
            )
