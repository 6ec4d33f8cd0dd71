"""Request bodies are strict (loyalty_shared.api_types): a JSON value of the wrong type is a 422
`validation_error` naming the field, never coerced; times and dates still come as RFC 3339
strings, and the JSON Schemas (so the OpenAPI documents) are those of the plain types."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

import httpx
import pytest
from fastapi import APIRouter
from loyalty_shared.api_types import AwareDatetime, Date, RequestModel, Time
from loyalty_shared.testing import toy_app, toy_client
from pydantic import AwareDatetime as PlainAwareDatetime
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Line(RequestModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(ge=1)


class Order(RequestModel):
    amount_minor: int = Field(ge=0)
    multiplier: float = 1.0
    paid: bool = False
    note: str | None = None
    kind: Literal["pos", "online"] = "pos"
    occurred_at: AwareDatetime | None = None
    birthday: Date | None = None
    opens: Time | None = None
    lines: list[Line] = Field(default_factory=list)
    flags: dict[str, bool] = Field(default_factory=dict)
    days: list[Date] = Field(default_factory=list)
    free: dict[str, Any] = Field(default_factory=dict)


def refused(body: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        Order.model_validate(body)
    return [(e["loc"], e["type"]) for e in caught.value.errors()]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"amount_minor": True}, ("amount_minor",)),
        ({"amount_minor": False}, ("amount_minor",)),
        ({"amount_minor": 10.0}, ("amount_minor",)),  # minor units are whole: 10.0 is no integer
        ({"amount_minor": 10.5}, ("amount_minor",)),
        ({"amount_minor": "12"}, ("amount_minor",)),
        ({"amount_minor": 1, "multiplier": True}, ("multiplier",)),
        ({"amount_minor": 1, "multiplier": "1.5"}, ("multiplier",)),
        ({"amount_minor": 1, "paid": 1}, ("paid",)),
        ({"amount_minor": 1, "paid": "true"}, ("paid",)),
        ({"amount_minor": 1, "note": 5}, ("note",)),
        ({"amount_minor": 1, "note": True}, ("note",)),
        ({"amount_minor": 1, "kind": 1}, ("kind",)),
        ({"amount_minor": 1, "occurred_at": 1700000000}, ("occurred_at",)),
        ({"amount_minor": 1, "occurred_at": 1700000000.5}, ("occurred_at",)),
        ({"amount_minor": 1, "occurred_at": "1700000000"}, ("occurred_at",)),  # still a number
        ({"amount_minor": 1, "occurred_at": True}, ("occurred_at",)),
        ({"amount_minor": 1, "occurred_at": "2024-05-01"}, ("occurred_at",)),  # a day, no time
        ({"amount_minor": 1, "occurred_at": "2024-05-01T09:30:00"}, ("occurred_at",)),  # offset?
        ({"amount_minor": 1, "birthday": 19000}, ("birthday",)),
        ({"amount_minor": 1, "birthday": "2024-05-01T00:00:00Z"}, ("birthday",)),
        ({"amount_minor": 1, "opens": 3600}, ("opens",)),
        ({"amount_minor": 1, "lines": [{"sku": "A", "quantity": True}]}, ("lines", 0, "quantity")),
        ({"amount_minor": 1, "lines": [{"sku": 7, "quantity": 1}]}, ("lines", 0, "sku")),
        ({"amount_minor": 1, "flags": {"sms": 1}}, ("flags", "sms")),
        ({"amount_minor": 1, "days": ["2024-05-01", 19000]}, ("days", 1)),
        ({"amount_minor": 1, "surprise": 1}, ("surprise",)),  # unknown fields stay refused
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_at_its_field(
    body: dict[str, Any], loc: tuple[int | str, ...]
):
    assert [found for found, _type in refused(body)] == [loc]


def test_json_values_of_the_right_types_pass_and_times_parse_from_rfc_3339_strings():
    order = Order.model_validate(
        {
            "amount_minor": 0,
            "multiplier": 2,  # a JSON integer is a number too
            "paid": True,
            "note": "好",
            "kind": "online",
            "occurred_at": "2024-05-01T09:30:00+08:00",
            "birthday": "1990-02-28",
            "opens": "09:30",
            "lines": [{"sku": "A", "quantity": 2}],
            "flags": {"sms": False},
            "days": ["2024-05-01"],
            "free": {"anything": [True, 1.5, "x"]},
        }
    )
    assert order.multiplier == 2.0 and isinstance(order.multiplier, float)
    assert order.occurred_at == datetime(2024, 5, 1, 1, 30, tzinfo=UTC)
    assert order.birthday == date(1990, 2, 28) and order.opens == time(9, 30)
    assert order.lines[0].quantity == 2 and order.days == [date(2024, 5, 1)]
    assert Order.model_validate({"amount_minor": 1, "occurred_at": "2024-05-01T01:30:00Z"})


def test_python_callers_may_still_pass_the_objects():
    at = datetime(2024, 5, 1, tzinfo=UTC)
    order = Order(amount_minor=1, occurred_at=at, birthday=date(1990, 1, 1), opens=time(8))
    assert order.occurred_at == at and order.birthday == date(1990, 1, 1)


def test_the_refusal_says_what_is_expected():
    with pytest.raises(ValidationError) as caught:
        Order.model_validate({"amount_minor": 1, "occurred_at": 1700000000})
    (error,) = caught.value.errors()
    assert error["type"] == "datetime_type"
    assert "RFC 3339" in error["msg"] and "offset" in error["msg"]


# Order with the plain (lax) types: the JSON Schema must not change with strictness.
class PlainOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_minor: int = Field(ge=0)
    multiplier: float = 1.0
    paid: bool = False
    note: str | None = None
    kind: Literal["pos", "online"] = "pos"
    occurred_at: PlainAwareDatetime | None = None
    birthday: date | None = None
    opens: time | None = None
    lines: list[Line] = Field(default_factory=list)
    flags: dict[str, bool] = Field(default_factory=dict)
    days: list[date] = Field(default_factory=list)
    free: dict[str, Any] = Field(default_factory=dict)


def test_the_json_schema_is_that_of_the_plain_types():
    strict, plain = Order.model_json_schema(), PlainOrder.model_json_schema()
    assert strict.pop("title") == "Order" and plain.pop("title") == "PlainOrder"
    assert strict == plain


class Colour(Enum):
    RED = "red"


class LaxLine(BaseModel):
    quantity: int


@pytest.mark.parametrize(
    "annotation",
    [
        *(datetime, date, time, UUID, Decimal, Colour, PlainAwareDatetime, LaxLine),
        *(datetime | None, list[date], dict[str, Decimal], list[LaxLine] | None),
    ],
)
def test_a_field_no_strict_json_body_could_fill_is_refused_when_the_class_is_made(
    annotation: Any,
):
    with pytest.raises(TypeError, match=r"Broken\.field: .* cannot come from a strict JSON"):
        type("Broken", (RequestModel,), {"__annotations__": {"field": annotation}})


def test_a_response_that_reuses_a_request_may_turn_strictness_off():
    class Public(Order):
        model_config = ConfigDict(extra="ignore", strict=False)

        created_at: datetime

    row = {"amount_minor": "5", "created_at": "2024-05-01T00:00:00", "other": 1}
    assert Public.model_validate(row).amount_minor == 5


# --------------------------------------------------------------------------- over HTTP

router = APIRouter(prefix="/v1")


@router.post("/orders", status_code=201)
async def post_order(body: Order) -> dict[str, Any]:
    return body.model_dump(mode="json")


@pytest.fixture(scope="module")
def app():
    return toy_app(router)


@pytest.fixture
async def client(app):
    async with toy_client(app) as c:
        yield c


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount_minor", True), ("amount_minor", 10.0), ("occurred_at", 1700000000), ("note", 42)],
)
async def test_the_body_is_a_422_validation_error_naming_the_field(
    client: httpx.AsyncClient, field: str, value: Any
):
    response = await client.post("/v1/orders", json={"amount_minor": 100, field: value})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert [e["loc"] for e in problem["errors"]] == [["body", field]]


async def test_the_same_body_with_the_right_types_is_taken(client: httpx.AsyncClient):
    body = {"amount_minor": 100, "occurred_at": "2024-05-01T09:30:00+08:00", "note": "42"}
    response = await client.post("/v1/orders", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["occurred_at"] == "2024-05-01T09:30:00+08:00"
