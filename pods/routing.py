"""Routing: a route has one spelling, and routing never redirects."""

from flask import Flask
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect


class StrictRoutingFlask(Flask):
    """Flask answering 404, never a redirect, for a route spelled another way.

    werkzeug redirects "/agent//v0/pods" to "/agent/v0/pods" (merge_slashes), a path
    missing the trailing slash of a route that has one (strict_slashes), and a rule's
    alias (redirect_defaults): a 308 with an HTML body and a Location built from the
    client's Host header. Here each is an unknown route, answered by the JSON 404.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Rules take this when they are added, and none is yet. It spares every 404
        # a second match with the slashes merged.
        self.url_map.merge_slashes = False

    def raise_routing_exception(self, request):
        # Flask's error handlers never see a routing redirect: it is raised here and
        # sent as it is.
        if isinstance(request.routing_exception, RequestRedirect):
            raise NotFound()
        super().raise_routing_exception(request)
