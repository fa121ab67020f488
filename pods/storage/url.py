"""A PostgreSQL URL's password kept out of every message and log line.

Both functions read the URL as text, without libpq: they must work on a URL that
libpq cannot read, or misreads (a password with an unencoded ``/`` or ``@`` makes
libpq take part of it for a host or a port, which its messages then quote). So
they treat as secret, generously, everything that could be a password: the user
information (from the first ``:`` after ``://`` to the ``@`` that ends it) and
the value of every secret parameter of the query (``password``, ``sslpassword``,
``oauth_client_secret`` ...), however its name is percent-encoded, up to the next
parameter libpq knows (a password may hold an unencoded ``&``).

Which parameters are secret, and which libpq knows, is asked of libpq itself when
psycopg is installed (``Conninfo.get_defaults()``: a secret is shown as ``*``), so
that a libpq that learns a new one is followed; the lists below (PostgreSQL 18's)
are added to what it says, and stand alone without psycopg.
"""

import functools
import re
from urllib.parse import unquote

MASK = "***"
QUOTED = re.compile(r"""(["'])(.*?)\1""")  # how libpq and psycopg quote a value in a message
# libpq's secret parameters: those it shows as "*" (PostgreSQL 18), and the SCRAM
# keys, which it shows as debug options ("D") but which authenticate all the same.
SECRET_PARAMETERS = frozenset({
    "password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key",
})
# libpq's connection parameters (PostgreSQL 18's list): what may follow a password in a query.
LIBPQ_KEYWORDS = frozenset("""
    host hostaddr port dbname user password passfile require_auth channel_binding connect_timeout
    client_encoding options application_name fallback_application_name keepalives keepalives_idle
    keepalives_interval keepalives_count tcp_user_timeout replication gssencmode sslmode sslnegotiation
    requiressl sslcompression sslcert sslkey sslkeylogfile sslpassword sslcertmode sslrootcert sslcrl sslcrldir
    sslsni requirepeer ssl_min_protocol_version ssl_max_protocol_version min_protocol_version
    max_protocol_version krbsrvname gsslib gssdelegation service target_session_attrs load_balance_hosts
    scram_client_key scram_server_key oauth_issuer oauth_client_id oauth_client_secret oauth_scope
""".split())


@functools.cache
def libpq_parameters() -> tuple[frozenset[str], frozenset[str]]:
    """(every parameter, the secret ones) as the libpq psycopg loads knows them,
    with the lists above added; the lists alone without psycopg or a libpq."""
    try:
        from psycopg import pq
    except ImportError:  # no postgres extra, or no libpq psycopg can load
        options = []
    else:
        try:
            options = pq.Conninfo.get_defaults()
        except Exception:  # libpq could not say (out of memory): the lists alone
            options = []
    keywords = {option.keyword.decode() for option in options}
    secrets = {option.keyword.decode() for option in options if option.dispchar == b"*"}
    return LIBPQ_KEYWORDS | keywords, SECRET_PARAMETERS | secrets


def looks_like_connection_string(target: str) -> bool:
    """Whether ``target``, which is not a ``postgresql://`` URL, was meant for a
    database server rather than a SQLite file: a URL of any other spelling (a
    leading blank, ``jdbc:``, ``postgresql+psycopg://``, no ``//``), or a libpq
    ``key=value`` string (two pairs or more, or a password or secret in one). pods
    would take it for a file name, and show it, password and all, in messages. One
    ``name=value`` pair without a secret (``user=alice.db``) stays a file name."""
    if "://" in target or re.match(r"\s*postgres(ql)?:", target, re.IGNORECASE):
        return True
    keys = [key.lower() for key in re.findall(r"(?:^|\s)(\w+)\s*=", target)]
    return len(keys) >= 2 or any("password" in key or "secret" in key for key in keys)


def _userinfo_end(url: str, start: int) -> int:
    """Where the user information ends (its ``@``), or -1. The ``@`` is the last one
    before the query, which starts at the first ``?`` after the path's first ``/``
    (a password may hold an unencoded ``?`` or ``/``, a query value an ``@``); when
    that finds none, the last ``@`` of all."""
    slash = url.find("/", start)
    query = url.find("?", slash if slash != -1 else start)
    at = url.rfind("@", start, query if query != -1 else len(url))
    return at if at != -1 else url.rfind("@", start)


def _secret_spans(url: str) -> list[tuple[int, int]]:
    keywords, secret_names = libpq_parameters()
    secret_prefixes = tuple(secret_names)
    spans = []
    start = url.find("://") + 3
    colon, at = url.find(":", start), _userinfo_end(url, start)
    if -1 < colon < at:
        spans.append((colon + 1, at))
    query = url.find("?", at if at != -1 else start)
    if query != -1:
        offset, secret = query + 1, False  # secret: in a password's value, which may hold "&"
        for parameter in url[query + 1:].split("&"):  # libpq reads "#" as part of a value, not a fragment
            name, equals, _ = parameter.partition("=")
            name = unquote(name).strip().lower()
            if equals and name in secret_names:
                secret = True
                spans.append((offset + parameter.index("=") + 1, offset + len(parameter)))
            elif equals and name in keywords:
                secret = False
            elif secret or unquote(parameter).strip().lower().startswith(secret_prefixes):
                spans.append((offset, offset + len(parameter)))  # "password%3Dx": unreadable
            offset += len(parameter) + 1
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def redact(url: str) -> str:
    """``url`` with whatever could be its password replaced by ``***``."""
    out, end = [], 0
    for a, b in _secret_spans(url):
        out += [url[end:a], MASK]
        end = b
    return "".join(out) + url[end:]


def scrub(message: str, url: str) -> str:
    """A driver's ``message`` about ``url``, with the URL redacted and any quoted
    fragment of its password (libpq quotes the token it could not read) masked."""
    message = message.replace(url, redact(url))
    spans = _secret_spans(url)
    if not spans:
        return message
    secrets = [url[a:b] for a, b in spans]
    secrets += [unquote(s) for s in secrets]

    def hide(quoted: re.Match) -> str:
        text = quoted.group(2)
        overlaps = any(
            a < i + len(text) and i < b
            for i in (m.start() for m in re.finditer(re.escape(text), url)) if text
            for a, b in spans
        )
        if overlaps or any(text and s and (text in s or s in text) for s in secrets):
            return quoted.group(1) + MASK + quoted.group(1)
        return quoted.group(0)

    return QUOTED.sub(hide, message)
