"""Serving the app with waitress."""

import json

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from .errors import error_body

WAITRESS_BODY_LIMIT = 1024 * 1024


class JsonErrorTask(ErrorTask):
    """waitress's own answers (malformed request, body over the limit, headers too
    large) in the contract's JSON error shape instead of text/plain."""

    def execute(self):
        e = self.request.error
        detail = {"_request": [e.body]} if e.code == 400 else None
        body = json.dumps(error_body(e.code, errors=detail)).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def make_server(app, host: str, port: int, threads: int):
    """A waitress server for ``app``, bound and ready to ``run()``."""
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="pods",
        # Flask answers bodies over MAX_CONTENT_LENGTH. waitress reads up to this
        # bound so that a client that sent a modest oversized body still reads its
        # 413 (closing on unread bytes makes the kernel send a reset); beyond it
        # waitress refuses early, before buffering.
        max_request_body_size=WAITRESS_BODY_LIMIT,
    )
    server.channel_class = JsonErrorChannel
    return server
