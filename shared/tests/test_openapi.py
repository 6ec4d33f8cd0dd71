"""What `loyalty_shared.openapi` declares in every service's OpenAPI document, on a toy app."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from loyalty_shared.api_types import DocumentedAs, RequestModel
from loyalty_shared.openapi import integral_bounds
from loyalty_shared.testing import toy_app
from pydantic import BaseModel, Field

router = APIRouter(prefix="/v1")


class Shape(BaseModel):
    kind: str


class Body(RequestModel):
    count: int = Field(ge=1, le=10_000)
    shape: Annotated[Any, DocumentedAs(Shape)]


class Parsed(RequestModel):
    """Validated as this model, documented as `Shape`: this model's schema is left unused."""

    kind: str


@router.post("/things", status_code=201)
async def create_thing(body: Body) -> dict[str, str]:
    return {}


@router.post("/parsed")
async def parse_thing(body: Annotated[Parsed, DocumentedAs(Shape)]) -> dict[str, str]:
    return {}


@router.get("/things/{thing_id}")
async def read_thing(thing_id: str) -> dict[str, str]:
    return {}


DOCUMENT = toy_app(router).openapi()


def test_operation_ids_are_the_route_names():
    ids = {
        (path, method): op["operationId"]
        for path, item in DOCUMENT["paths"].items()
        for method, op in item.items()
    }
    assert ids[("/v1/things", "post")] == "create_thing"
    assert ids[("/v1/things/{thing_id}", "get")] == "read_thing"
    assert ids[("/healthz", "get")] == "healthz"
    assert ids[("/v1/admin/jobs/{job}/run", "post")] == "run_job_now"


def test_v1_operations_require_the_bearer_scheme_and_the_probes_do_not():
    assert DOCUMENT["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert DOCUMENT["paths"]["/v1/things/{thing_id}"]["get"]["security"] == [{"bearer": []}]
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in DOCUMENT["paths"][probe]["get"]


def test_every_post_declares_an_optional_idempotency_key_and_a_get_does_not():
    post = DOCUMENT["paths"]["/v1/things"]["post"]["parameters"]
    assert [(p["name"], p["in"], p["required"]) for p in post] == [
        ("Idempotency-Key", "header", False)
    ]
    assert post[0]["schema"]["maxLength"] == 255
    get = DOCUMENT["paths"]["/v1/things/{thing_id}"]["get"]["parameters"]
    assert all(p["in"] != "header" for p in get)


def test_integer_bounds_are_integers_again():
    count = DOCUMENT["components"]["schemas"]["Body"]["properties"]["count"]
    assert (count["minimum"], count["maximum"]) == (1, 10_000)
    assert all(type(count[k]) is int for k in ("minimum", "maximum"))
    assert integral_bounds({"maximum": 0.5, "minimum": 2.0**60}) == {
        "maximum": 0.5,
        "minimum": 2.0**60,  # beyond what a float holds exactly: left as it came
    }


def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return DOCUMENT["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_a_documented_field_has_its_shape_and_leaves_no_unused_schema():
    schemas = DOCUMENT["components"]["schemas"]
    assert _resolved(schemas["Body"]["properties"]["shape"])["title"] == "Shape"
    body = DOCUMENT["paths"]["/v1/parsed"]["post"]["requestBody"]["content"]["application/json"]
    assert _resolved(body["schema"])["required"] == ["kind"]
    assert "Parsed" not in schemas
