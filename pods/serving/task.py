"""One request run and answered: the task that sends a response in one write,
and the one that answers waitress's own refusals in the contract's JSON shape."""

import io
import operator
import time

from waitress.task import ErrorTask, WSGITask
from waitress.utilities import build_http_date

from ..api import accesslog
from ..api.auth import CREATED_KEY_ENVIRON_KEY, TOKEN_HASH_ENVIRON_KEY
from ..api.errors import error_json
from .admission import WithheldBody, logged_caller
from .scheduler import ANONYMOUS

# A 503 or 429 the app gave without Retry-After (the database not answering) gets this.
RETRY_AFTER_SECONDS = "1"
# Header names as they go out: waitress writes each Capitalized-Like-This, which costs a
# split and a join per header per answer; here once per name. The RateLimit-* names are
# spelled as the IETF draft spells them.
_HEADER_NAMES = {name.lower(): name for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")}
_by_name = operator.itemgetter(0)
_date: tuple[int | None, str] = (None, "")  # (whole second, its HTTP date): the Date header, once a second


def _header_name(name: str) -> str:
    spelled = _HEADER_NAMES.get(name)
    if spelled is None:
        spelled = _HEADER_NAMES.get(name.lower()) or "-".join([part.capitalize() for part in name.split("-")])
        if len(_HEADER_NAMES) < 1024:  # the app's names are few; a client's never get here
            _HEADER_NAMES[name] = spelled
    return spelled


def _http_date(when: float) -> str:
    global _date
    second, text = _date
    if second != int(when):
        second, text = int(when), build_http_date(when)
        _date = (second, text)
    return text


class CoalescingTask(WSGITask):
    """A request's task. Two things differ from waitress's:

    - It sends the status line and headers in the same write as a body that
      comes in one piece, as every pods response does: one send() per response
      instead of two. Each send releases the GIL, and under load each hand-off
      costs more than the send (GET at 8 connections: +15%, measured).
    - An oversized request (``PodsRequestParser``) reaches the app with no body
      and a Content-Length over the app's limit, so that werkzeug answers 413
      wherever a view reads the body; any other request whose body was withheld
      (``Admission.at_head``) reaches it with a body that cannot be read. Their
      connections close after the answer. During shutdown, every answer closes
      its connection too.
    - A request refused before it ran (``request.refusal``: 429, or 503 once shed)
      is answered so, without the app, and logged like every other answer.
    - Every answer under a rate limit carries its RateLimit-* headers; every 429
      and 503 a Retry-After.
    - The tenant map learns whose a token is from the key that authenticated it.
    """

    wrote_header: bool  # waitress's, declared for the type checker
    response_headers: list[tuple[str, str]]  # waitress's, declared for the type checker

    def start(self):
        super().start()
        record_queue_wait(self)
        if self.request.withheld or self.channel.server.stopping:
            self.set_close_on_finish()

    def execute(self):
        if self.request.refusal is not None:
            return self.refuse(self.request.refusal)
        super().execute()

    def refuse(self, refusal):
        started = time.perf_counter()
        request, channel = self.request, self.channel
        request_id = accesslog.request_id_for(request.headers.get("X_REQUEST_ID", ""))
        self.status = refusal.status
        self.response_headers += [("Content-Type", "application/json"), ("X-Request-Id", request_id),
                                  *refusal.headers]
        self.complete = True
        self.content_length = len(refusal.body)
        self.write(refusal.body)
        caller = logged_caller(request.tenant)
        accesslog.write_line(
            request.command, request.path, refusal.status[:3], started, request_id, caller,
            client=accesslog.client_address(
                channel.addr[0], request.headers.get("X_FORWARDED_FOR"), channel.server.trusted_proxies),
        )
        metrics = channel.server.metrics
        if metrics is not None:  # a 429 is counted as limited by its status, a 503 here as shed
            metrics.answer(request.command, accesslog.REFUSED_ROUTE, refusal.status[:3],
                           time.perf_counter() - started, caller)
            if refusal.status.startswith("503"):
                metrics.shed()

    def get_environment(self):
        environ = super().get_environment()
        if self.request.key_hash is not None:
            environ[TOKEN_HASH_ENVIRON_KEY] = self.request.key_hash  # hashed once, at the head
        if self.request.too_large:
            environ["CONTENT_LENGTH"] = str(self.request.received_length)
            environ["wsgi.input"] = io.BytesIO()
        elif self.request.withheld:
            environ["wsgi.input"] = WithheldBody()
        return environ

    def build_response_header(self):
        request = self.request
        environ = self.environ
        if request.key_hash is not None and environ is not None:
            # Learned (or forgotten) before the answer goes out, so that the client's next
            # request finds it so: a token not known yet, or one refused; a key just created.
            if request.tenant.group is ANONYMOUS or self.status[:3] == "401":
                self.channel.server.admission.learn(request, environ.get(accesslog.CALLER_ENVIRON_KEY), self.status)
            created = environ.get(CREATED_KEY_ENVIRON_KEY)
            if created is not None:
                self.channel.server.admission.learn_owners((created,))
        headers = self.response_headers
        if request.rate_headers:
            headers.extend(request.rate_headers)
        if self.status[:3] in ("503", "429") and not any(name.lower() == "retry-after" for name, _ in headers):
            headers.append(("Retry-After", RETRY_AFTER_SECONDS))
        return self._head()

    def _head(self) -> bytes:
        """waitress's Task.build_response_header, line for line in what it sends, with
        header names spelled once per name and the Date once per second."""
        has_body = self.has_body
        response_headers: list[tuple[str, str]] = []
        content_length_header = date_header = server_header = None
        for name, value in self.response_headers:
            name = _header_name(name)
            if name == "Content-Length":
                if not has_body:
                    continue
                content_length_header = value
            elif name == "Date":
                date_header = value
            elif name == "Server":
                server_header = value
            response_headers.append((name, value))
        self.response_headers = response_headers
        if content_length_header is None and self.content_length is not None and has_body:
            content_length_header = str(self.content_length)
            response_headers.append(("Content-Length", content_length_header))
        connection = self.request.headers.get("CONNECTION", "").lower()
        if self.version == "1.0":
            if connection == "keep-alive" and content_length_header:
                response_headers.append(("Connection", "Keep-Alive"))
            else:
                self.set_close_on_finish()
        elif self.version == "1.1":
            if connection == "close":
                self.set_close_on_finish()
            if not content_length_header:
                if has_body:
                    response_headers.append(("Transfer-Encoding", "chunked"))
                    self.chunked_response = True
                if not self.close_on_finish:
                    self.set_close_on_finish()
        else:
            raise AssertionError("neither HTTP/1.0 or HTTP/1.1")
        ident = self.channel.server.adj.ident
        if not server_header:
            if ident:
                response_headers.append(("Server", ident))
        else:
            response_headers.append(("Via", ident or "waitress"))
        if not date_header:
            response_headers.append(("Date", _http_date(self.start_time)))
        lines = [f"HTTP/{self.version} {self.status}"]
        lines += [f"{name}: {value}" for name, value in sorted(response_headers, key=_by_name)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def write(self, data):
        if self.wrote_header or not data:
            return super().write(data)
        if not self.complete:
            raise RuntimeError("start_response was not called before body written")
        head = self.build_response_header()  # decides chunking and whether a body is allowed
        self.wrote_header = True
        fits = self.content_length is not None and len(data) <= self.content_length - self.content_bytes_written
        if self.has_body and not self.chunked_response and fits:
            self.content_bytes_written += len(data)
            self.channel.write_soon(head + data)
        else:  # HEAD, chunked, or more than announced: waitress's own handling of the body
            self.channel.write_soon(head)
            super().write(data)


def record_queue_wait(task) -> None:
    """Metrics: how long ``task``'s request waited, from arriving whole (the
    parser's ``read_at``) to a thread starting it."""
    metrics = task.channel.server.metrics
    if metrics is not None and task.request.read_at:
        metrics.queue_wait(time.perf_counter() - task.request.read_at)


def record_refusal(task, method: str, status: int, started: float) -> None:
    """Metrics: an answer waitress gave itself, counted under the route
    ``accesslog.HTTP_ERROR_ROUTE`` (it was never routed)."""
    metrics = task.channel.server.metrics
    if metrics is not None:
        metrics.answer(method, accesslog.HTTP_ERROR_ROUTE, str(status), time.perf_counter() - started, None)


class JsonErrorTask(ErrorTask):
    """waitress's own answers (a malformed request, a request line or headers too
    large, an error escaping the app) in the contract's JSON error shape instead of text/plain,
    with a request id, and logged (and counted) like every other answer."""

    def start(self):
        super().start()
        record_queue_wait(self)

    def execute(self):
        started = time.perf_counter()
        request, channel = self.request, self.channel
        e = request.error
        detail = {"_request": [e.body]} if e.code == 400 else None
        # The limits some fixes name (414, 431).
        limit = f"{channel.adj.max_request_header_size // 1024} KiB"
        body = error_json(e.code, errors=detail, limit=limit).encode()
        request_id = accesslog.request_id_for(request.headers.get("X_REQUEST_ID", ""))
        self.status = f"{e.code} {e.reason}"
        self.response_headers += [("Content-Type", "application/json"), ("X-Request-Id", request_id)]
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        # A head too large to parse says nothing reliable about method or path.
        parsed = e.code not in (414, 431)
        method = getattr(request, "command", "") if parsed else ""
        accesslog.write_line(
            method,
            getattr(request, "path", "") if parsed else "",
            e.code,
            started,
            request_id,
            client=accesslog.client_address(
                channel.addr[0], request.headers.get("X_FORWARDED_FOR"), channel.server.trusted_proxies
            ),
        )
        record_refusal(self, method, e.code, started)
