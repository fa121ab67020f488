"""The published description matches what the server really does."""

URL = "/agent/v0/pods"


def doc(client):
    r = client.get("/agent/v0/openapi.json")
    assert r.status_code == 200
    return r.json


def test_documents_every_route_of_the_api(app, client):
    paths = doc(client)["paths"]
    documented = {(path, method) for path, item in paths.items() for method in item if method != "parameters"}
    routes = {
        ("/v0" + rule.rule.removeprefix("/agent/v0").replace("<", "{").replace(">", "}"), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/agent/v0/")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routes
    assert len(documented) == 14  # four for pods, nine for keys, and the document itself


def matches(schema, value, components):
    """A small JSON Schema check, enough for the shapes this document uses."""
    if "$ref" in schema:
        return matches(components[schema["$ref"].rsplit("/", 1)[1]], value, components)
    if value is None:
        return schema.get("nullable", False)
    kind = schema["type"]
    if kind == "object":
        props = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and set(schema.get("required", [])) <= set(value)
            and all(matches(props[k], v, components) for k, v in value.items() if k in props)
            and (schema.get("additionalProperties", True) is not False or set(value) <= set(props))
        )
    if kind == "array":
        return isinstance(value, list) and all(matches(schema["items"], v, components) for v in value)
    return isinstance(value, {"string": str, "integer": int, "boolean": bool}[kind])


def test_real_responses_match_the_documented_schemas(client, headers, create):
    d = doc(client)
    components = d["components"]["schemas"]
    pod = create(name="n", client_id="c")
    create()
    ops = d["paths"]
    listed = client.get(URL, query_string={"limit": 1}, headers=headers).json

    def schema_of(op, status):
        return op["responses"][status]["content"]["application/json"]["schema"]

    assert matches(schema_of(ops["/v0/pods"]["post"], "200"), pod, components)
    assert matches(schema_of(ops["/v0/pods"]["get"], "200"), listed, components)
    assert set(components["Pod"]["properties"]) == set(pod)
    missing = client.get(f"{URL}/nope", headers=headers).json
    assert matches(schema_of(ops["/v0/pods/{pod_id}"]["get"], "404"), missing, components)
    bad = client.post(URL, json={"colour": 1}, headers=headers).json
    assert matches(schema_of(ops["/v0/pods"]["post"], "400"), bad, components)
    assert not matches(components["PodCreate"], {"colour": 1}, components)


def test_documented_limits_are_the_enforced_ones(client):
    d = doc(client)
    create = d["components"]["schemas"]["PodCreate"]["properties"]
    assert (create["name"]["minLength"], create["name"]["maxLength"]) == (1, 255)
    limit = next(p for p in d["paths"]["/v0/pods"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 100)


def test_documented_limit_pattern_is_what_the_server_accepts(client, headers):
    import re

    d = doc(client)
    limit = next(p for p in d["paths"]["/v0/pods"]["get"]["parameters"] if p["name"] == "limit")["schema"]
    pattern = re.compile(limit["pattern"])
    for value in ["1", "7", "10", "99", "100", "0", "101", "05", "007", "+5", " 5", "5 ", "1_0", "٥", "５", "1.0", ""]:
        r = client.get(URL, query_string={"limit": value}, headers=headers)
        documented = bool(pattern.search(value)) and limit["minimum"] <= int(value) <= limit["maximum"]
        assert r.status_code == (200 if documented else 400), value
