"""The application class, and where a running app keeps its storage.

``PodsFlask`` is Flask set for a stateless JSON API: each of its settings removes
a per-request cost or a second spelling of a route that this API gets nothing for.
"""

import json
from inspect import iscoroutinefunction
from types import FunctionType

from flask import Flask, Response, current_app
from flask.ctx import RequestContext
from flask.globals import request_ctx
from flask.json.provider import DefaultJSONProvider
from flask.sansio.scaffold import _sentinel
from flask.sessions import NullSession, SessionInterface
from flask.signals import request_tearing_down
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect

from .accesslog import ROUTE_ENVIRON_KEY
from ..storage import Storage

STORAGE_EXTENSION = "pods.storage"  # app.extensions[...]: the app's storage
# PodsFlask.ensure_sync remembers the answers for this many code objects: the app's
# views and hooks are a few dozen.
MAX_SYNC_ANSWERS = 1024
# A function's attributes that inspect.iscoroutinefunction reads besides its code
# (or may: functools has named them differently by version): inspect.markcoroutinefunction's
# mark (Python 3.12+), and the partialmethod a class attribute stands for (read from
# 3.13, all such functions sharing one code object).
CORO_ATTRIBUTES = frozenset({"_is_coroutine_marker", "__partialmethod__", "_partialmethod"})


def get_storage() -> Storage:
    """The storage of the app handling the current request."""
    return current_app.extensions[STORAGE_EXTENSION]


def empty_ok() -> Response:
    """200 with an empty body and no Content-Type: nothing, not an empty document."""
    response = Response(status=200)
    del response.headers["Content-Type"]
    return response


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


class RoutedRequestContext(RequestContext):
    """Flask's request context, noting the rule a request matched in its environ
    (``accesslog.ROUTE_ENVIRON_KEY``), where the access log, outside Flask, finds
    it after the answer: metrics count answers by route template, never by path."""

    def match_request(self) -> None:
        super().match_request()
        rule = self.request.url_rule
        if rule is not None:
            self.request.environ[ROUTE_ENVIRON_KEY] = rule.rule


class PodsFlask(Flask):
    """The pods application: Flask for a stateless JSON API.

    Compact JSON and no sessions (``CompactJSONProvider``, ``NoSessions``), and
    strict routing: 404, never a redirect, for a route spelled another way.

    werkzeug redirects "/agent//v0/pods" to "/agent/v0/pods" (merge_slashes), a path
    missing the trailing slash of a route that has one (strict_slashes), and a rule's
    alias (redirect_defaults): a 308 with an HTML body and a Location built from the
    client's Host header. Here each is an unknown route, answered by the JSON 404.

    Flask also gives every route an OPTIONS method of its own, answered 200 with an
    empty text/html body, without a key. Here OPTIONS is a method no route has:
    the JSON 405 with Allow, as for any other.
    """

    json_provider_class = CompactJSONProvider
    session_interface = NoSessions()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read as each route is added, and none is yet.
        self.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
        # Rules take this when they are added, and none is yet. It spares every 404
        # a second match with the slashes merged.
        self.url_map.merge_slashes = False
        self._coroutine_code: dict = {}  # ensure_sync's answers, by code object

    def ensure_sync(self, func):
        # Flask (and flask-httpauth) ask this of every view, hook and callback they
        # call, four times a request, and each answer inspects the function. For a
        # plain function the answer is its code's, unless an attribute says otherwise
        # (CORO_ATTRIBUTES): remembered by code object, so that a closure made per
        # request (an after_this_request function) neither misses nor is kept alive.
        # Anything else (a method, a partial, a callable object) gets Flask's own answer.
        if type(func) is FunctionType and CORO_ATTRIBUTES.isdisjoint(func.__dict__):
            code = func.__code__
            coroutine = self._coroutine_code.get(code)
            if coroutine is None:
                coroutine = iscoroutinefunction(func)
                if len(self._coroutine_code) < MAX_SYNC_ANSWERS:
                    self._coroutine_code[code] = coroutine
            if not coroutine:
                return func
        return super().ensure_sync(func)

    def preprocess_request(self):
        # Flask looks up URL value preprocessors and before-request hooks by blueprint
        # name on every request; this app has none.
        if self.url_value_preprocessors or self.before_request_funcs:
            return super().preprocess_request()
        return None

    def process_response(self, response):
        # Likewise after-request hooks; and NoSessions has no session to save.
        if (self.after_request_funcs or request_ctx._after_request_functions
                or type(self.session_interface) is not NoSessions):
            return super().process_response(response)
        return response

    def do_teardown_request(self, exc=_sentinel):
        # Likewise teardown hooks (RequestContext.pop passes exc); its signal is sent as Flask sends it.
        if self.teardown_request_funcs or exc is _sentinel:
            return super().do_teardown_request(exc)
        request_tearing_down.send(self, _async_wrapper=self.ensure_sync, exc=exc)

    def request_context(self, environ):
        return RoutedRequestContext(self, environ)

    def raise_routing_exception(self, request):
        # Flask's error handlers never see a routing redirect: it is raised here and
        # sent as it is.
        if isinstance(request.routing_exception, RequestRedirect):
            raise NotFound()
        super().raise_routing_exception(request)
