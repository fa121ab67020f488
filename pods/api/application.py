"""Routing: a route has one spelling, routing never redirects, and a route answers
only the methods it has."""

from flask import Flask
from flask.ctx import RequestContext
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect

from .accesslog import ROUTE_ENVIRON_KEY


class RoutedRequestContext(RequestContext):
    """Flask's request context, noting the rule a request matched in its environ
    (``accesslog.ROUTE_ENVIRON_KEY``), where the access log, outside Flask, finds
    it after the answer: metrics count answers by route template, never by path."""

    def match_request(self) -> None:
        super().match_request()
        rule = self.request.url_rule
        if rule is not None:
            self.request.environ[ROUTE_ENVIRON_KEY] = rule.rule


class StrictRoutingFlask(Flask):
    """Flask answering 404, never a redirect, for a route spelled another way.

    werkzeug redirects "/agent//v0/pods" to "/agent/v0/pods" (merge_slashes), a path
    missing the trailing slash of a route that has one (strict_slashes), and a rule's
    alias (redirect_defaults): a 308 with an HTML body and a Location built from the
    client's Host header. Here each is an unknown route, answered by the JSON 404.

    Flask also gives every route an OPTIONS method of its own, answered 200 with an
    empty text/html body, without a key. Here OPTIONS is a method no route has:
    the JSON 405 with Allow, as for any other.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read as each route is added, and none is yet.
        self.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
        # Rules take this when they are added, and none is yet. It spares every 404
        # a second match with the slashes merged.
        self.url_map.merge_slashes = False

    def request_context(self, environ):
        return RoutedRequestContext(self, environ)

    def raise_routing_exception(self, request):
        # Flask's error handlers never see a routing redirect: it is raised here and
        # sent as it is.
        if isinstance(request.routing_exception, RequestRedirect):
            raise NotFound()
        super().raise_routing_exception(request)
