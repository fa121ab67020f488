"""Two Flask extension points, set for a stateless JSON API.

Both are per-request costs of a stock Flask app that this API gets nothing for.
"""

import json

from flask.json.provider import DefaultJSONProvider
from flask.sessions import NullSession, SessionInterface


class CompactJSONProvider(DefaultJSONProvider):
    """Flask's default provider, compact, keys in the order the schemas dump them.

    ``json.dumps`` with any option set builds a new JSONEncoder per call; on a
    one-pod GET that was most of the cost of writing the body.
    """

    sort_keys = False

    def __init__(self, app):
        super().__init__(app)
        self._encoder = json.JSONEncoder(
            ensure_ascii=self.ensure_ascii, sort_keys=False, separators=(",", ":"), default=self.default
        )

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(self._encoder.encode(obj) + "\n", mimetype=self.mimetype)


class NoSessions(SessionInterface):
    """No cookies, no session: callers authenticate every request with a key.

    Flask's default interface builds a fresh null session per request and checks
    it again before responding; one shared null session (it refuses every write)
    does the same job.
    """

    _null = NullSession()

    def open_session(self, app, request):
        return self._null

    def save_session(self, app, session, response):
        pass
