"""The published OpenAPI documents as client generators and gateways read them (issue
"Production on a real cluster": the API as its clients' tools read it).

Every operation has a short, unique `operationId`; every /v1 operation requires the bearer
scheme and every /v1 POST declares `Idempotency-Key`; every request body has an example that
its schema and the service's request model both take; every `$ref` resolves. The documents are
the committed ones (`docs/openapi/*.json`), which `test_published_documents.py` holds to the
code.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from loyalty_shared.service import create_app
from loyalty_shared.settings import ServiceSettings
from pydantic import TypeAdapter

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
OPERATION_ID = re.compile(r"^[a-z][a-z0-9_]*$")
OPEN = {"/healthz", "/readyz", "/metrics"}
METHODS = {"get", "put", "post", "delete", "patch"}


def document(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "docs" / "openapi" / f"{name}.json").read_text())


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def body_examples(doc: dict[str, Any], operation: dict[str, Any]) -> list[Any]:
    media = operation["requestBody"]["content"]["application/json"]
    examples = [e["value"] for e in media.get("examples", {}).values()]
    if "example" in media:
        examples.append(media["example"])
    schema = media["schema"]
    examples += schema.get("examples", [])  # next to a $ref, or inline
    examples += resolve(doc, schema).get("examples", [])
    for branch in schema.get("anyOf", []):  # an optional body: [model, null]
        examples += resolve(doc, branch).get("examples", [])
    return examples


@pytest.mark.parametrize("name", SERVICES)
def test_every_operation_has_a_short_unique_operation_id(name: str):
    ids = [op.get("operationId") for _, _, op in operations(document(name))]
    assert all(isinstance(i, str) and OPERATION_ID.match(i) for i in ids), ids
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("name", SERVICES)
def test_every_v1_operation_requires_the_bearer_scheme(name: str):
    doc = document(name)
    scheme = doc["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method, operation in operations(doc):
        if path.startswith("/v1/"):
            assert operation.get("security") == [{"bearer": []}], (method, path)
        else:
            assert path in OPEN and "security" not in operation, (method, path)


@pytest.mark.parametrize("name", SERVICES)
def test_every_v1_post_declares_the_idempotency_key(name: str):
    for path, method, operation in operations(document(name)):
        if method != "post" or not path.startswith("/v1/"):
            continue
        keys = [
            p
            for p in operation.get("parameters", [])
            if p["in"] == "header" and p["name"].lower() == "idempotency-key"
        ]
        assert len(keys) == 1 and not keys[0].get("required"), (method, path)
        assert keys[0]["schema"]["type"] == "string", (method, path)


@pytest.mark.parametrize("name", SERVICES)
def test_every_request_body_has_an_example_its_schema_takes(name: str):
    doc = document(name)
    for path, method, operation in operations(doc):
        if "requestBody" not in operation:
            continue
        examples = body_examples(doc, operation)
        assert examples, f"{method.upper()} {path}: no example of its request body"
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator(
            {**schema, "components": doc["components"]},
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        for example in examples:
            errors = [e.message for e in validator.iter_errors(example)]
            assert not errors, f"{method.upper()} {path}: {example}: {errors[:3]}"


def routes(app: Any) -> Any:
    """Every route, however FastAPI nests included routers (as tests/chaos/test_access.py)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes holds them all
        return app.routes
    return iter_route_contexts(app.routes)


@pytest.mark.parametrize("name", SERVICES)
def test_every_request_body_example_is_taken_by_its_request_model(name: str):
    """The example passes the service's own request model (strict, as a JSON body arrives), so
    an example is no request the service would refuse on its shape."""
    definition = importlib.import_module(f"loyalty_{name}.bootstrap").definition()
    settings = ServiceSettings.for_service(name, database_url="postgresql://unused/unused")
    app = create_app(definition, settings=settings, background=False)
    doc = app.openapi()
    checked = 0
    for route in routes(app):
        if getattr(route, "body_field", None) is None:
            continue
        adapter = TypeAdapter(route.body_field.field_info.annotation)
        for method in route.methods:
            operation = doc["paths"][route.path_format][method.lower()]
            for example in body_examples(doc, operation):
                adapter.validate_python(json.loads(json.dumps(example)))
                checked += 1
    assert checked


@pytest.mark.parametrize("name", SERVICES)
def test_every_reference_resolves(name: str):
    doc = document(name)
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        resolve(doc, {"$ref": ref})
