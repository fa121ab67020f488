"""Every error is the contract's JSON, whatever produced it."""


import pytest
from conftest import storage_of


def assert_error(r, status, name, code):
    assert r.status_code == status
    assert r.content_type == "application/json"
    assert r.json["name"] == name
    assert r.json["code"] == code
    assert isinstance(r.json["message"], str) and r.json["message"]


@pytest.mark.parametrize("path", ["/", "/agent", "/agent/v0", "/agent/v1/pods", "/agent/v0/pods/", "/favicon.ico"])
def test_unknown_routes_are_json_404(client, headers, path):
    assert_error(client.get(path, headers=headers), 404, "NotFoundError", "not_found")


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("put", "/agent/v0/pods", {"GET", "POST"}),
        ("patch", "/agent/v0/pods", {"GET", "POST"}),
        ("delete", "/agent/v0/pods", {"GET", "POST"}),
        ("post", "/agent/v0/pods/x", {"GET", "DELETE"}),
        ("put", "/agent/v0/pods/x", {"GET", "DELETE"}),
        ("post", "/healthz", {"GET"}),
    ],
)
def test_wrong_method_is_json_405_with_allow(client, headers, method, path, allowed):
    r = getattr(client, method)(path, headers=headers)
    assert_error(r, 405, "MethodNotAllowedError", "method_not_allowed")
    assert allowed <= {m.strip() for m in r.headers["Allow"].split(",")}


def test_unexpected_failure_is_json_500_without_a_traceback(app, client, headers, create, monkeypatch, caplog):
    pod = create(name="n")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(storage_of(app), "caller_for_key_hash", broken)
    r = client.get(f"/agent/v0/pods/{pod['pod_id']}", headers=headers)
    assert_error(r, 500, "InternalServerError", "internal_server_error")
    assert b"secret internals" not in r.data and b"Traceback" not in r.data
    assert "secret internals" in caplog.text  # logged for the operator instead


def test_healthz_is_503_while_the_database_cannot_be_read(app, client, monkeypatch):
    storage = storage_of(app)

    def unreadable():
        raise storage.unavailable[0]("the database went away")  # the driver's own kind of error

    monkeypatch.setattr(storage, "ping", unreadable)
    assert_error(client.get("/healthz"), 503, "ServiceUnavailableError", "service_unavailable")
