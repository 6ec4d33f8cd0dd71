"""The OpenAPI documents as client generators and gateways read them (`create_app` wires this).

FastAPI builds each service's document; `finish_openapi` then declares, in place, what the
shared plumbing does for every operation whatever the service's own code says:

- the problem responses of every /v1 operation (`errors.document_problems`);
- the bearer security scheme (`components.securitySchemes.bearer`), required by every /v1
  operation (contract §3: `/healthz`, `/readyz` and `/metrics` need no key);
- the `Idempotency-Key` header on every /v1 POST (the write guard honours it on every POST);
- no schema that nothing refers to (a field documented as another model's schema, with
  `api_types.DocumentedAs`, leaves its own model's behind);
- integer bounds as integers: FastAPI's OpenAPI model reads `minimum`, `maximum` and the
  like as floats (`Field(ge=1)` came out as `1.0`), and a generator then takes `2.0` for a
  valid integer, which a strict request body refuses.

`operation_id` gives every operation its route's name (the handler function's name) as its
`operationId`, in place of FastAPI's `<name>_<path>_<method>`; names are unique per document
(`tests/contract/test_openapi_documents.py`).
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi.routing import APIRoute

from .errors import document_problems

BEARER_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "`Authorization: Bearer <api key>`; keys and their scopes come from "
    "`LOYALTY_API_KEYS`. No key or an unknown one: 401 `unauthorized`; a key without the "
    "operation's scope: 403 `forbidden`.",
}
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
IDEMPOTENCY_KEY_MAX_LENGTH = 255  # idempotency.py refuses longer ones (422 validation_error)
IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the same key with the same body answers the first "
    "response again (header `Idempotent-Replayed: true`) and changes nothing more; with "
    "another body 422 `idempotency_key_reused`; while the first request runs 409 "
    "`idempotency_key_in_progress` with `Retry-After`. Keys are scoped by API key and kept "
    "24 hours.",
    "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
    "examples": {"a retry-safe key": {"value": "pos-7-20261124-000123"}},
}
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_NOT_SCHEMAS = ("example", "examples", "default", "const", "enum")
_EXACT = 2**53  # a float holds every integer below this exactly


def operation_id(route: APIRoute) -> str:
    """`generate_unique_id_function` of every app: the route's name, its function's name."""
    return route.name


def _v1_operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, operations in openapi.get("paths", {}).items()
        if path.startswith("/v1/")
        for method, operation in operations.items()
    ]


def document_security(openapi: dict[str, Any]) -> dict[str, Any]:
    """Declare the bearer scheme and require it on every /v1 operation, in place."""
    components = openapi.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = dict(BEARER_SCHEME)
    for _, _, operation in _v1_operations(openapi):
        operation["security"] = [dict(requirement) for requirement in SECURITY]
    return openapi


def document_idempotency(openapi: dict[str, Any]) -> dict[str, Any]:
    """Declare the optional `Idempotency-Key` header on every /v1 POST, in place. An operation
    that reads the header itself (coupons:exchange passes it on) gets the same declaration: the
    write guard takes the key before the operation does."""
    for _, method, operation in _v1_operations(openapi):
        if method != "post":
            continue
        parameters = [
            p
            for p in operation.get("parameters", [])
            if not (p.get("in") == "header" and p.get("name", "").lower() == "idempotency-key")
        ]
        parameters.append(copy.deepcopy(IDEMPOTENCY_KEY))  # a copy each, as in errors.py
        operation["parameters"] = parameters
    return openapi


def integral_bounds(node: Any) -> Any:
    """Bounds that are whole numbers as integers again, in place, throughout a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _BOUNDS and isinstance(value, float) and value.is_integer():
                if abs(value) < _EXACT:
                    node[key] = int(value)
            elif key not in _NOT_SCHEMAS:
                integral_bounds(value)
    elif isinstance(node, list):
        for item in node:
            integral_bounds(item)
    return node


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for k, v in node.items() if k != "$ref"))
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node))
    return set()


def drop_unused_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Remove the component schemas that no operation reaches, in place."""
    schemas = openapi.get("components", {}).get("schemas", {})
    prefix = "#/components/schemas/"
    wanted: set[str] = set()
    todo = [r for r in _refs(openapi.get("paths", {})) if r.startswith(prefix)]
    while todo:
        name = todo.pop()[len(prefix) :]
        if name in wanted or name not in schemas:
            continue
        wanted.add(name)
        todo += [r for r in _refs(schemas[name]) if r.startswith(prefix)]
    for name in set(schemas) - wanted:
        del schemas[name]
    return openapi


def finish_openapi(openapi: dict[str, Any]) -> dict[str, Any]:
    """Everything above, in place, on a document FastAPI generated."""
    document_problems(openapi)
    document_security(openapi)
    document_idempotency(openapi)
    drop_unused_schemas(openapi)
    integral_bounds(openapi)
    return openapi
