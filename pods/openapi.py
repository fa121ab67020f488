"""The OpenAPI 3 document of the pod endpoints, derived from the marshmallow schemas
so that what it documents is what the server loads and dumps."""

import functools

from marshmallow import Schema, fields, validate

from .errors import KNOWN
from .schemas import (
    CONTROL_CHARACTERS,
    ListArgsSchema,
    PodCreateSchema,
    PodListSchema,
    PodSchema,
    QueryInteger,
)

NO_CONTROL_CHARACTERS = "^[^" + CONTROL_CHARACTERS.pattern[1:-1] + "]*$"


def field_schema(field: fields.Field) -> dict:
    """A JSON Schema (OpenAPI 3.0 dialect) for one marshmallow field."""
    if isinstance(field, fields.Nested):
        out = {"$ref": f"#/components/schemas/{_name(field.nested)}"}
        if field.many:
            out = {"type": "array", "items": out}
    elif isinstance(field, fields.Boolean):
        out = {"type": "boolean"}
    elif isinstance(field, fields.Integer):
        out = {"type": "integer"}
        if isinstance(field, QueryInteger):  # how the number must be written in the query
            out["pattern"] = f"^({field.PATTERN.pattern})$"
    else:
        out = {"type": "string"}
    for v in field.validators:
        if isinstance(v, validate.Length):
            out.update(minLength=v.min, maxLength=v.max, pattern=NO_CONTROL_CHARACTERS)
        elif isinstance(v, validate.Range):
            out.update(minimum=v.min, maximum=v.max)
    if field.allow_none:
        out["nullable"] = True
    if "description" in field.metadata:
        out["description"] = field.metadata["description"]
    return out


def object_schema(schema: type[Schema], closed: bool = False) -> dict:
    fields_ = schema._declared_fields
    out = {
        "type": "object",
        "properties": {name: field_schema(f) for name, f in fields_.items()},
        "required": [name for name, f in fields_.items() if f.required],
    }
    if not out["required"]:
        del out["required"]
    if closed:
        out["additionalProperties"] = False
    return out


def _name(schema) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__name__.removesuffix("Schema")


def _error(status: int) -> dict:
    return {
        "description": KNOWN[status][0],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(ref: str) -> dict:
    return {
        "description": "OK",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _operation(op_id: str, summary: str, ok: dict, errors: list[int], **extra) -> dict:
    responses = {"200": ok} | {str(s): _error(s) for s in errors + [401, 500, 503]}
    return {"operationId": op_id, "summary": summary, "responses": responses, **extra}


@functools.cache  # the schemas do not change while the process runs
def document() -> dict:
    pod_id_param = {"name": "pod_id", "in": "path", "required": True, "schema": {"type": "string"}}
    query_params = [
        {"name": name, "in": "query", "required": False, "schema": field_schema(f)}
        for name, f in ListArgsSchema._declared_fields.items()
    ]
    error_schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "message": {"type": "string"},
            "code": {"type": "string"},
            "errors": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
        },
        "required": ["name", "message", "code"],
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Pods API", "version": "0"},
        "servers": [{"url": "/agent"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v0/pods": {
                "get": _operation(
                    "listPods", "List pods", _ok("PodList"), [400], parameters=query_params
                ),
                "post": _operation(
                    "createPod",
                    "Create pod",
                    _ok("Pod"),
                    [400, 413, 415],
                    requestBody={
                        "required": False,
                        "description": (
                            "A JSON object in UTF-8, no key given twice. Content-Type application/json, with no"
                            " parameter but charset=utf-8; no Content-Encoding but identity. An empty body is {}."
                        ),
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/PodCreate"}}
                        },
                    },
                ),
            },
            "/v0/pods/{pod_id}": {
                "parameters": [pod_id_param],
                "get": _operation("getPod", "Get pod", _ok("Pod"), [404]),
                "delete": _operation(
                    "deletePod", "Delete pod", {"description": "Deleted; empty body."}, [404]
                ),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Pod": object_schema(PodSchema),
                "PodCreate": object_schema(PodCreateSchema, closed=True),
                "PodList": object_schema(PodListSchema),
                "Error": error_schema,
            },
        },
    }
