"""JSON responses with an encoder built once per app rather than once per response."""

import json

from flask.json.provider import DefaultJSONProvider


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
