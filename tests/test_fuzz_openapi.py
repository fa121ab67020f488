"""Schema-driven fuzzing: the live server against its own /agent/v0/openapi.json."""

import pytest
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from live import Server

    s = Server(tmp_path_factory.mktemp("fuzz") / "fuzz.db")
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("authorized", [True, False], ids=["with-key", "without-key"])
def test_every_operation_conforms_to_the_published_schema(server, authorized):
    schema = schemathesis.openapi.from_url(server.url + "/agent/v0/openapi.json")
    headers = {"Authorization": f"Bearer {server.bootstrap_token}"} if authorized else {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("GET", "/v0/pods"), ("POST", "/v0/pods"), ("GET", "/v0/pods/{pod_id}"), ("DELETE", "/v0/pods/{pod_id}"),
    }
    for operation in operations:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @hypothesis_given(case=operation.as_strategy())
        def conforms(case):
            response = case.call(headers=headers)
            case.validate_response(response, checks=CHECKS)
            if not authorized:
                assert response.status_code == 401

        conforms()
