"""Errors from real servers, on both backends: each of the contract's codes, raw and
through the official SDK (``e.body`` with its ``code`` and ``fix``), the fix of
every error status the server gives (waitress's own refusals included), and one
401 body for unknown, deleted, revoked, expired and near-miss tokens.

The server is ``tests/serving/faultserver.py``: ``python app.py`` that fails a pod list
asking ``fault=internal`` with a bug (500) and ``fault=unavailable`` with the
database driver's "not answering" (503), so that those two come from a real
server too. 429 needs a rate limiter, which this server does not have yet: the
shape of its answer is tested in test_errors.py
(test_the_429_error_helper_gives_the_contracts_shape_with_retry_headers)."""

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from agentmail import AgentMail
from agentmail.api_keys import ApiKeyPermissions, CreateBearerApiKeyRequest
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError, ValidationError
from helpers import Server, new_database, raw_request, run_app
from dbtools import BACKENDS

from pods.api.errors import error_body

pytestmark = pytest.mark.live

FAULT_SERVER = str(Path(__file__).resolve().parent / "faultserver.py")
ROOT = "pods_errors-live-root-key-0123456789abcdefghij"
API = "/agent/v0"


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    """A real server, its organization key ``root``, a pod, a key ``reader`` (pod_read
    and api_key_create only) and a key ``scoped`` to the pod (every permission)."""
    folder = tmp_path_factory.mktemp("errors")
    db = new_database(request.param, folder, request)
    with Server(db, env={"PODS_API_KEY": ROOT}, workdir=folder, command=[sys.executable, FAULT_SERVER]) as server:
        with httpx.Client(base_url=server.url + API, headers=bearer(ROOT)) as c:
            pod = c.post("/pods", json={"name": "errors"}).json()
            reader = c.post("/api-keys", json={"permissions": {"pod_read": True, "api_key_create": True}}).json()
            scoped = c.post(f"/pods/{pod['pod_id']}/api-keys", json={}).json()
        yield {"server": server, "pod": pod["pod_id"], "reader": reader["api_key"], "scoped": scoped["api_key"]}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def sdk(world):
    """sdk(token, authorization=...) -> an AgentMail client aimed at the server;
    ``authorization`` replaces the SDK's own header (None: no header at all)."""
    transports = []

    def make(token="unused", **replace):
        hooks = []
        if "authorization" in replace:
            def rewrite(request: httpx.Request):
                del request.headers["Authorization"]
                if replace["authorization"] is not None:
                    request.headers["Authorization"] = replace["authorization"]
            hooks.append(rewrite)
        transports.append(httpx.Client(timeout=30, event_hooks={"request": hooks}))
        environment = AgentMailEnvironment(http=world["server"].url + "/agent", websockets="ws://unused")
        return AgentMail(api_key=token, environment=environment, httpx_client=transports[-1])

    yield make
    for t in transports:
        t.close()


NO_RETRY = {"max_retries": 0}  # the SDK retries 5xx; these are asserted, not retried


def code_and_fix(e: ApiError) -> tuple[int, str, str]:
    """What a program reads from the SDK's error, as the README shows: the SDK
    parses a 400 and a 404 into its ErrorResponse models (``e.body.code``) and
    leaves every other status a dict (``e.body["code"]``)."""
    body = e.body if isinstance(e.body, dict) else e.body.model_dump()
    return e.status_code, body["code"], body["fix"]


# code: (raw request as (token, method, path, json body, query), the SDK's call, the fix's parameters)
CODES = {
    "missing_authorization": ((None, "GET", "/pods", None, None),
                              lambda sdk, w: sdk(authorization=None).pods.list(), {}),
    "unauthorized": (("Basic dXNlcjpwYXNz", "GET", "/pods", None, None),
                     lambda sdk, w: sdk(authorization="Basic dXNlcjpwYXNz").pods.list(), {}),
    "unknown_api_key": (("pods_" + "x" * 43, "GET", "/pods", None, None),
                        lambda sdk, w: sdk("pods_" + "x" * 43).pods.list(), {}),
    "missing_permission": (("reader", "DELETE", "/pods/{pod}", None, None),
                           lambda sdk, w: sdk(w["reader"]).pods.delete(pod_id=w["pod"]),
                           {"permission": "pod_delete"}),
    "permission_escalation": (("reader", "POST", "/api-keys", {"permissions": {"pod_delete": True}}, None),
                              lambda sdk, w: sdk(w["reader"]).api_keys.create(request=CreateBearerApiKeyRequest(
                                  permissions=ApiKeyPermissions(pod_delete=True))),
                              {"permissions": "pod_delete"}),
    "forbidden": (("scoped", "POST", "/pods", {}, None), lambda sdk, w: sdk(w["scoped"]).pods.create(),
                  {"pod_id": "{pod}", "action": "create pods"}),
    "validation_error": ((ROOT, "POST", "/pods", {"name": ""}, None), lambda sdk, w: sdk(ROOT).pods.create(name=""),
                         {}),
    "not_found": ((ROOT, "GET", "/pods/no-such-pod", None, None),
                  lambda sdk, w: sdk(ROOT).pods.get(pod_id="no-such-pod"), {}),
    "internal_error": ((ROOT, "GET", "/pods", None, {"fault": "internal"}),
                       lambda sdk, w: sdk(ROOT).pods.list(request_options={
                           **NO_RETRY, "additional_query_parameters": {"fault": "internal"}}), {}),
    "service_unavailable": ((ROOT, "GET", "/pods", None, {"fault": "unavailable"}),
                            lambda sdk, w: sdk(ROOT).pods.list(request_options={
                                **NO_RETRY, "additional_query_parameters": {"fault": "unavailable"}}), {}),
}
SITUATION = {"not_found": "pod_not_found", "forbidden": "outside_scope", "service_unavailable": "database_unavailable"}
STATUS = {"missing_authorization": 401, "unauthorized": 401, "unknown_api_key": 401, "missing_permission": 403,
          "permission_escalation": 403, "forbidden": 403, "validation_error": 400, "not_found": 404,
          "internal_error": 500, "service_unavailable": 503}


def send(world, token, method, path, body=None, query=None) -> httpx.Response:
    token = world.get(token, token) if token else None
    headers = {} if token is None else {"Authorization": token if token.startswith("Basic ") else f"Bearer {token}"}
    return httpx.request(method, world["server"].url + API + path.format(**world), json=body, params=query,
                         headers=headers, timeout=30)


@pytest.mark.parametrize("code", list(CODES))
def test_each_code_from_a_real_server_raw_and_through_the_sdk(world, sdk, code):
    (token, method, path, body, query), call, params = CODES[code]
    r = send(world, token, method, path, body, query)
    assert (r.status_code, r.headers["Content-Type"]) == (STATUS[code], "application/json")
    answer = r.json()
    assert answer["code"] == code
    errors = answer.get("errors")
    params = {name: value.format(**world) for name, value in params.items()}
    assert answer["fix"] == error_body(SITUATION.get(code, code), errors=errors, **params)["fix"]
    assert answer["fix"] and answer["name"] == error_body(STATUS[code])["name"]
    print(f"\n{code}: {method} {path} -> {r.status_code} fix: {answer['fix']}")

    with pytest.raises(ApiError) as e:
        call(sdk, world)
    assert code_and_fix(e.value) == (STATUS[code], code, answer["fix"])
    if code in ("validation_error", "not_found"):  # the SDK's typed errors: fields of a model
        assert isinstance(e.value, ValidationError if code == "validation_error" else NotFoundError)
        assert (e.value.body.code, e.value.body.fix) == (code, answer["fix"])
    else:  # every other status: ApiError with the JSON as a dict
        assert type(e.value) is ApiError and e.value.body == answer


def test_the_readme_example_reads_code_and_fix_of_any_error(world, sdk):
    """The README's snippet, as it is written there."""
    from agentmail.core.api_error import ApiError

    client = sdk(world["reader"])
    seen = []
    for call in (lambda: client.pods.delete(pod_id=world["pod"]), lambda: client.pods.get(pod_id="nope")):
        try:
            call()
        except ApiError as e:
            body = e.body if isinstance(e.body, dict) else e.body.model_dump()
            seen.append((e.status_code, body["code"], bool(body["fix"])))
    assert seen == [(403, "missing_permission", True), (404, "not_found", True)]


def test_401_is_one_body_for_unknown_deleted_revoked_expired_and_near_miss_tokens(world):
    server = world["server"]
    with httpx.Client(base_url=server.url + API, headers=bearer(ROOT)) as c:
        deleted = c.post("/api-keys", json={}).json()
        assert c.delete(f"/api-keys/{deleted['api_key_id']}").status_code == 200
        soon = datetime.now(UTC) + timedelta(seconds=1)
        expired = c.post("/api-keys", json={"expires_at": soon.isoformat()}).json()
    made = run_app("keys", "create", "--org", "default", "--db", server.db)
    revoked = made.stdout.splitlines()[-1]  # the token; "Created API key ID ..." is on stderr
    key_id = made.stderr.split("Created API key ")[1].split()[0]
    assert run_app("keys", "revoke", key_id, "--db", server.db).returncode == 0
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    tokens = {
        "unknown": "pods_" + "x" * 43, "deleted": deleted["api_key"], "revoked": revoked, "expired": expired["api_key"],
        "near miss": ROOT[:-1] + "X", "short": ROOT[:-1], "upper case": ROOT.upper(),
    }
    answers = {}
    for what, token in tokens.items():
        r = httpx.get(server.url + API + "/pods", headers=bearer(token))
        answers[what] = (r.status_code, r.content, r.headers["WWW-Authenticate"])
    assert len(set(answers.values())) == 1, answers
    status, content, _ = answers["unknown"]
    assert status == 401 and json.loads(content) == error_body("unknown_api_key")


# -- every error status the server gives, the HTTP layer's own included --------------------------


def head(target: bytes, *headers: bytes, method=b"GET", version=b"HTTP/1.1", body=b"") -> bytes:
    return b"\r\n".join([method + b" " + target + b" " + version, *headers, b"Connection: close", b"", b""]) + body


AUTH = b"Authorization: Bearer " + ROOT.encode()
HOST = b"Host: x"
PODS = (API + "/pods").encode()
STATUSES = {
    "waitress 400 (malformed)": (b"GARBAGE\r\n\r\n", 400, "validation_error"),
    "400 (no Host)": (head(PODS, AUTH), 400, "validation_error"),
    "401": (head(PODS, HOST), 401, "missing_authorization"),
    "404": (head(b"/nowhere", HOST, AUTH), 404, "not_found"),
    "405": (head(PODS, HOST, AUTH, method=b"PUT"), 405, "method_not_allowed"),
    "413": (head(PODS, HOST, AUTH, b"Content-Type: application/json", b"Content-Length: 70000", method=b"POST",
                 body=b" " * 70_000), 413, "payload_too_large"),
    "414": (head(PODS + b"?page_token=" + b"A" * 40_000, HOST, AUTH), 414, "uri_too_long"),
    "415": (head(PODS, HOST, AUTH, b"Content-Type: text/plain", b"Content-Length: 2", method=b"POST", body=b"{}"),
            415, "unsupported_media_type"),
    "431": (head(PODS, HOST, AUTH, b"X-Big: " + b"a" * 40_000), 431, "request_header_fields_too_large"),
    "500": (head(PODS + b"?fault=internal", HOST, AUTH), 500, "internal_error"),
    "501": (head(PODS, HOST, AUTH, b"Transfer-Encoding: gzip", method=b"POST"), 501, "not_implemented"),
    "503": (head(PODS + b"?fault=unavailable", HOST, AUTH), 503, "service_unavailable"),
    "505": (head(PODS, HOST, AUTH, version=b"HTTP/2.0"), 505, "http_version_not_supported"),
}


@pytest.mark.parametrize("what", list(STATUSES))
def test_every_error_status_has_a_fix(world, what):
    request, status, code = STATUSES[what]
    got, body = raw_request(world["server"].url, request)
    answer = json.loads(body)
    assert (got, answer["code"]) == (status, code), answer
    assert answer["name"].endswith("Error") and answer["message"]
    assert isinstance(answer["fix"], str) and len(answer["fix"]) > 20
    if status in (414, 431):
        assert "32 KiB" in answer["message"] and "32 KiB" in answer["fix"]
    print(f"\n{what}: {answer['code']}: {answer['fix']}")
