"""One request run and answered: the task that sends a response in one write,
and the one that answers waitress's own refusals in the contract's JSON shape."""

import io
import time

from waitress.task import ErrorTask, WSGITask

from ..api import accesslog
from ..api.errors import error_json


class CoalescingTask(WSGITask):
    """A request's task. Two things differ from waitress's:

    - It sends the status line and headers in the same write as a body that
      comes in one piece, as every pods response does: one send() per response
      instead of two. Each send releases the GIL, and under load each hand-off
      costs more than the send (GET at 8 connections: +15%, measured).
    - An oversized request (``PodsRequestParser``) reaches the app with no body
      and a Content-Length over the app's limit, so that werkzeug answers 413
      wherever a view reads the body; its connection closes after the answer.
      During shutdown, every answer closes its connection too.
    """

    def start(self):
        super().start()
        record_queue_wait(self)
        if self.request.too_large or self.channel.server.stopping:
            self.set_close_on_finish()

    def get_environment(self):
        environ = super().get_environment()
        if self.request.too_large:
            environ["CONTENT_LENGTH"] = str(self.request.received_length)
            environ["wsgi.input"] = io.BytesIO()
        return environ

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
    """waitress's own answers (a malformed request, headers too large, an error
    escaping the app) in the contract's JSON error shape instead of text/plain,
    with a request id, and logged (and counted) like every other answer."""

    def start(self):
        super().start()
        record_queue_wait(self)

    def execute(self):
        started = time.perf_counter()
        request, channel = self.request, self.channel
        e = request.error
        detail = {"_request": [e.body]} if e.code == 400 else None
        body = error_json(e.code, errors=detail).encode()
        request_id = accesslog.request_id_for(request.headers.get("X_REQUEST_ID", ""))
        self.status = f"{e.code} {e.reason}"
        self.response_headers += [("Content-Type", "application/json"), ("X-Request-Id", request_id)]
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        # A head too large to parse says nothing reliable about method or path.
        parsed = e.code != 431
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
