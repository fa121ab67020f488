"""Rules about the HTTP request as it arrived (Host, the form of its target),
applied before Flask routes it.

A WSGI wrapper rather than a Flask hook: these are about the request, not any
endpoint, and on the hot path the wrapper costs a few dictionary lookups where a
``before_request`` hook goes through Flask's dispatch.
"""

from urllib.parse import unquote_to_bytes

from werkzeug.wrappers import Response

from .accesslog import HTTP_ERROR_ROUTE, ROUTE_ENVIRON_KEY
from .errors import error_json

HOST_RULE = "An HTTP/1.1 request needs exactly one Host header."
TARGET_RULE = 'The request target must be a path starting with "/", or an absolute http URL.'


class HttpRules:
    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        # RFC 9112, section 3.2: 400 for an HTTP/1.1 request without Host, and for
        # any request with two. waitress joins repeated headers with ", " (so may a
        # proxy, RFC 9110 section 5.3), and no host name holds a comma.
        host = environ.get("HTTP_HOST")
        if (host is None and environ.get("SERVER_PROTOCOL") == "HTTP/1.1") or (host is not None and "," in host):
            return _answer(environ, start_response, 400, {"_request": [HOST_RULE]})
        target = environ.get("REQUEST_URI", "/")  # as sent; set by waitress and werkzeug
        if target[:1] != "/" and not target[:8].lower().startswith(("http://", "https://")):
            # RFC 9112, section 3.2: origin form ("/agent/v0/pods") or absolute form
            # ("http://host/agent/v0/pods"). waitress and werkzeug would read
            # "agent/v0/pods" as the route too: a second spelling of every route.
            return _answer(environ, start_response, 400, {"_request": [TARGET_RULE]})
        if target[:2] == "//" or target[:4].lower() == "/%2f":
            # waitress and werkzeug both drop the slashes that start a path, which
            # would make "//agent/v0/pods" a second spelling of a route (and a way
            # around a proxy rule written for "/agent/"). It is an unknown route,
            # logged with the path as sent (decoded as waitress decodes paths).
            path = target.partition("#")[0].partition("?")[0]
            environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
            return _answer(environ, start_response, 404)
        return self.wsgi_app(environ, start_response)


def _answer(environ, start_response, status: int, errors: dict | None = None):
    if status == 400:  # refused as malformed, before routing; a 404 is an unknown route
        environ[ROUTE_ENVIRON_KEY] = HTTP_ERROR_ROUTE
    response = Response(error_json(status, errors=errors), status, content_type="application/json")
    return response(environ, start_response)
