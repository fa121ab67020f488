"""Routing: one spelling per route, no redirects, a route answers only its own
methods, a pod id is one path segment, and the request's Host and the form of its
target are checked before anything else."""

import json

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

URL = "/agent/v0/pods"
NOT_FOUND = {"name": "NotFoundError", "message": "Not found.", "code": "not_found"}
POD_NOT_FOUND = {"name": "NotFoundError", "message": "Pod not found.", "code": "not_found"}
METHOD_NOT_ALLOWED = {"name": "MethodNotAllowedError", "message": "Method not allowed.", "code": "method_not_allowed"}

# Every one of these is a route's path spelled another way: never a redirect to the
# route (its Location would be built from the client's Host header), never the route.
# (Paths starting "//" are below: the test client reads "//agent" as a host name.)
OTHER_SPELLINGS = [
    "/agent//v0/pods",
    "/agent/v0//pods",
    "/agent/v0/pods/",
    "/agent/v0/pods//",
    "/AGENT/v0/pods",
    "/agent/V0/pods",
    "/agent/v0/Pods",
    "/agent/v0//pods/x",
    "/agent/v0/pods//x",
    "/agent/v0/pods/x/",
    "/healthz/",
    "/agent/v0//openapi.json",
]


@pytest.mark.parametrize("path", OTHER_SPELLINGS)
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_another_spelling_of_a_route_is_404_json(client, headers, path, method):
    r = getattr(client, method)(path, headers=headers)
    assert r.status_code == 404
    assert r.json == NOT_FOUND
    assert "Location" not in r.headers


@pytest.mark.parametrize("tail", ["inboxes", "api-keys/k1/x", "x/y/z", ""])
def test_a_path_under_an_existing_pod_is_an_unknown_route(client, headers, create, tail):
    pod = create(name="n")
    for method in ("get", "post", "delete", "patch"):
        r = getattr(client, method)(f"{URL}/{pod['pod_id']}/{tail}", headers=headers)
        assert (r.status_code, r.json) == (404, NOT_FOUND), (method, tail)
    assert client.get(f"{URL}/{pod['pod_id']}", headers=headers).json == pod


# One path segment of any shape (what WSGI decodes it to): authenticated, then
# looked up. "%2F" is decoded to "/" before routing, so it is two segments.
ODD_SEGMENTS = ["%0A", "a%0Ab", "%0D%0A", "%00", "a%00b", "%FF", "%FF%FE", "%C0%AE", "%ED%A0%80", "%09",
                "%20", "..", ".", "%2E%2E", "a%3Fb", "a%23b", "a%5Cb", "%7F", "é" * 300, "x" * 5000]


@pytest.mark.parametrize("segment", ODD_SEGMENTS)
def test_any_one_segment_is_a_pod_id(client, headers, segment):
    for method in ("get", "delete"):
        r = getattr(client, method)(f"{URL}/{segment}")
        assert r.status_code == 401, (method, segment)
        r = getattr(client, method)(f"{URL}/{segment}", headers=headers)
        assert (r.status_code, r.json) == (404, POD_NOT_FOUND), (method, segment)


def test_a_redirect_that_routing_still_raises_is_404_json(app, client):
    # A route ending in "/" makes werkzeug redirect the path without it: pods has no
    # such route today, but one added later must not bring redirects back.
    app.add_url_rule("/agent/v0/slashed/", "slashed", lambda: {"ok": True})
    assert client.get("/agent/v0/slashed/").json == {"ok": True}
    r = client.get("/agent/v0/slashed")
    assert (r.status_code, r.json) == (404, NOT_FOUND)
    assert "Location" not in r.headers


def call(app, protocol="HTTP/1.1", host=None, path=URL, headers=None, **environ_overrides):
    """Run one request through the whole WSGI app; ``host=None`` sends no Host."""
    environ = EnvironBuilder(path=path, headers=headers or {}).get_environ()
    environ["SERVER_PROTOCOL"] = protocol
    environ.pop("HTTP_HOST")
    if host is not None:
        environ["HTTP_HOST"] = host
    environ.update(environ_overrides)
    body, status, response_headers = run_wsgi_app(app.wsgi_app, environ)
    return int(status[:3]), b"".join(body), response_headers


@pytest.mark.parametrize(
    "target", ["//agent/v0/pods", "///agent/v0/pods", "//agent/v0/pods?limit=1", "/%2Fagent/v0/pods", "//healthz"]
)
def test_a_path_starting_with_two_slashes_is_404(app, headers, target):
    # As waitress passes it on: the slashes that start the path already dropped
    # (werkzeug's routing would drop them too), the target as sent in REQUEST_URI.
    path = "/" + target.partition("?")[0].lstrip("/").removeprefix("%2F")
    status, body, response_headers = call(app, host="x", path=path, headers=headers, REQUEST_URI=target)
    assert (status, json.loads(body)) == (404, NOT_FOUND)
    assert "Location" not in response_headers


HOST_REQUIRED = {
    "name": "ValidationError",
    "message": "Invalid request.",
    "code": "validation_error",
    "errors": {"_request": ["An HTTP/1.1 request needs exactly one Host header."]},
}


@pytest.mark.parametrize(
    "protocol,host",
    [
        ("HTTP/1.1", None),  # no Host
        ("HTTP/1.1", "a, b"),  # two Host headers, as waitress passes them on
        ("HTTP/1.1", "a, a"),
        ("HTTP/1.1", "a, "),
        ("HTTP/1.1", ", "),
        ("HTTP/1.1", "a,b"),
        ("HTTP/1.0", "a, b"),
    ],
)
def test_no_host_or_two_hosts_is_400(app, headers, protocol, host):
    for path in (URL, "/healthz", "/no/such/route"):
        status, body, response_headers = call(app, protocol, host, path, headers)
        assert status == 400, (protocol, host, path)
        assert json.loads(body) == HOST_REQUIRED
        assert response_headers["Content-Type"] == "application/json"
        assert int(response_headers["Content-Length"]) == len(body)


@pytest.mark.parametrize(
    "protocol,host", [("HTTP/1.0", None), ("HTTP/1.1", ""), ("HTTP/1.1", "example.com:8080"), ("HTTP/1.1", "[::1]")]
)
def test_one_host_or_none_in_http_1_0_is_fine(app, headers, protocol, host):
    status, body, _ = call(app, protocol, host, URL, headers)
    assert status == 200, body


@pytest.mark.parametrize("path,allowed", [
    (URL, {"GET", "HEAD", "POST"}),
    (f"{URL}/x", {"GET", "HEAD", "DELETE"}),
    ("/healthz", {"GET", "HEAD"}),
    ("/agent/v0/openapi.json", {"GET", "HEAD"}),
])
def test_options_is_a_method_no_route_has(client, headers, path, allowed):
    for hdrs in ({}, headers):
        r = client.options(path, headers=hdrs)
        assert (r.status_code, r.json) == (405, METHOD_NOT_ALLOWED)
        assert r.content_type == "application/json"
        assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed


def test_options_on_no_route_is_404(client):
    r = client.options("/agent/v0/nowhere")
    assert (r.status_code, r.json) == (404, NOT_FOUND)


@pytest.mark.parametrize("target", ["agent/v0/pods", "agent/v0/pods?limit=1", "healthz", "*", "ftp://x/agent/v0/pods"])
def test_a_target_neither_a_path_nor_an_absolute_url_is_400(app, headers, target):
    path = "/" + target.partition("?")[0]
    status, body, _ = call(app, host="x", path=path, headers=headers, REQUEST_URI=target)
    assert status == 400
    assert json.loads(body)["errors"] == {
        "_request": ['The request target must be a path starting with "/", or an absolute http URL.']
    }


@pytest.mark.parametrize("target", ["/agent/v0/pods", "http://x/agent/v0/pods", "HTTPS://x/agent/v0/pods?limit=1"])
def test_a_path_or_an_absolute_url_is_a_target(app, headers, target):
    status, body, _ = call(app, host="x", path=URL, headers=headers, REQUEST_URI=target)
    assert status == 200, body
