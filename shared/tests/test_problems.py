"""Problem documents on the wire and in OpenAPI: what the shared plumbing answers for bad input
(never a 500) and declares for every /v1 operation, so that clients and schemathesis
(tests/chaos/test_schemathesis.py) can hold the services to it."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from fastapi import APIRouter
from loyalty_shared.errors import PROBLEM_MEDIA_TYPE
from loyalty_shared.testing import toy_app, toy_client
from pydantic import BaseModel

router = APIRouter(prefix="/v1")


class Thing(BaseModel):
    name: str


@router.get("/things/{thing_id}")
async def get_thing(thing_id: str) -> Thing:
    return Thing(name=thing_id)


@router.post("/things", status_code=201)
async def post_thing(body: Thing) -> Thing:
    return body


@router.get("/overflow")
async def overflow(days: int) -> dict[str, str]:
    return {"at": (datetime.max - timedelta(days=1) + timedelta(days=days)).isoformat()}


@router.get("/busy")
async def busy() -> dict[str, str]:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    raise PoolTimeout("QueuePool limit of size 10 overflow 10 reached")


@pytest.fixture(scope="module")
def app():
    return toy_app(router)


@pytest.fixture
async def client(app):
    async with toy_client(app) as c:
        yield c


def test_openapi_declares_the_problems_of_every_v1_operation(app):
    document = app.openapi()
    problem = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    get = document["paths"]["/v1/things/{thing_id}"]["get"]["responses"]
    assert {"401", "403", "404", "422", "503"} <= set(get)
    post = document["paths"]["/v1/things"]["post"]["responses"]
    assert {"401", "403", "409", "413", "415", "422", "503"} <= set(post) and "404" not in post
    for responses in (get, post):
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"] == problem, status
    schemas = document["components"]["schemas"]
    assert "Problem" in schemas and "HTTPValidationError" not in schemas
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


async def test_a_body_that_is_not_utf8_is_a_422_validation_error(client):
    response = await client.post(
        "/v1/things", content=b'{"name": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"] == [
        {"loc": ["body"], "msg": "body is not valid JSON: it is not UTF-8 text"}
    ]
    ok = await client.post("/v1/things", json={"name": "🎉 会员 עברית"})
    assert ok.status_code == 201 and ok.json() == {"name": "🎉 会员 עברית"}


async def test_arithmetic_out_of_range_is_a_422_not_a_500(client):
    assert (await client.get("/v1/overflow", params={"days": 0})).status_code == 200
    response = await client.get("/v1/overflow", params={"days": 2})
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert "out of range" in response.json()["detail"]


async def test_every_database_connection_busy_is_a_503_to_retry(client):
    response = await client.get("/v1/busy")
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response.headers["retry-after"]


async def test_a_database_out_of_connections_is_a_503_to_retry(pg_server_url):
    """PostgreSQL refusing a connection for want of slots (SQLSTATE 53300, as under overload
    when every service's pool is full) is unavailability, not a bug."""
    from loyalty_shared.db import create_engine
    from sqlalchemy import text

    admin = create_engine(pg_server_url)
    async with admin.begin() as conn:
        await conn.execute(text("DROP ROLE IF EXISTS no_slots"))
        await conn.execute(text("CREATE ROLE no_slots LOGIN CONNECTION LIMIT 0"))
    await admin.dispose()
    starved = create_engine(pg_server_url.replace("postgres@", "no_slots@", 1))
    toy = APIRouter(prefix="/v1")

    @toy.get("/starved")
    async def starved_route() -> dict[str, str]:
        async with starved.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return {}

    try:
        async with toy_client(toy_app(toy)) as c:
            response = await c.get("/v1/starved")
    finally:
        await starved.dispose()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable"
    assert response.headers["retry-after"]
