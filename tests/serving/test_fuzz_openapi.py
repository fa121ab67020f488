"""Schema-driven fuzzing: the live server against its own /agent/v0/openapi.json,
with an organization key, a pod-scoped key and no key at all."""

import httpx
import pytest
from conftest import new_database
from dbtools import BACKENDS
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import given as hypothesis_given
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = {
    ("GET", "/v0/pods"), ("POST", "/v0/pods"), ("GET", "/v0/pods/{pod_id}"), ("DELETE", "/v0/pods/{pod_id}"),
    ("GET", "/v0/api-keys"), ("POST", "/v0/api-keys"), ("GET", "/v0/api-keys/{api_key_id}"),
    ("PATCH", "/v0/api-keys/{api_key_id}"), ("DELETE", "/v0/api-keys/{api_key_id}"),
    ("GET", "/v0/pods/{pod_id}/api-keys"), ("POST", "/v0/pods/{pod_id}/api-keys"),
    ("PATCH", "/v0/pods/{pod_id}/api-keys/{api_key_id}"), ("DELETE", "/v0/pods/{pod_id}/api-keys/{api_key_id}"),
}  # and the document's own path, which schemathesis leaves out of what it calls


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    from live import Server

    folder = tmp_path_factory.mktemp("fuzz")
    s = Server(new_database(request.param, folder, request), workdir=folder)
    org = {"Authorization": f"Bearer {s.bootstrap_token}"}
    with httpx.Client(base_url=s.url + "/agent/v0", headers=org) as c:
        pod = c.post("/pods", json={"name": "fuzzed"}).json()
        s.pod_token = c.post(f"/pods/{pod['pod_id']}/api-keys", json={"name": "fuzzer"}).json()["api_key"]
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("key", ["organization", "pod", "none"])
def test_every_operation_conforms_to_the_published_schema(server, key):
    schema = schemathesis.openapi.from_url(server.url + "/agent/v0/openapi.json")
    token = {"organization": server.bootstrap_token, "pod": server.pod_token, "none": None}[key]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == OPERATIONS
    for operation in operations:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @hypothesis_given(case=operation.as_strategy())
        def conforms(case):
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)
            if not token:
                assert response.status_code == 401

        conforms()
    # Whatever was sent, both keys still work.
    for still in (server.bootstrap_token, server.pod_token):
        assert httpx.get(server.url + "/agent/v0/pods", headers={"Authorization": f"Bearer {still}"}).status_code == 200
