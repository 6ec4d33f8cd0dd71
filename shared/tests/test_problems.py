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


async def _answer_of(engine_url: str, sql: str, *, setup: str | None = None) -> tuple[int, dict]:
    """What a toy route answers when its statement meets the database in the state `setup`
    (run on a connection of the route's own) puts it in."""
    from loyalty_shared.db import create_engine
    from sqlalchemy import text

    engine = create_engine(engine_url)
    toy = APIRouter(prefix="/v1")

    @toy.post("/write")
    async def write_route() -> dict[str, str]:
        async with engine.begin() as conn:
            if setup:
                await conn.execute(text(setup))
            await conn.execute(text(sql))
        return {}

    try:
        async with toy_client(toy_app(toy)) as c:
            response = await c.post("/v1/write")
    finally:
        await engine.dispose()
    return response.status_code, {
        **response.json(),
        "retry-after": response.headers.get("retry-after"),
    }


async def test_a_database_that_refuses_connections_is_a_503(pg_server_url, databases):
    """`ALTER DATABASE ... ALLOW_CONNECTIONS false` answers a new connection with SQLSTATE 55000:
    the database is unavailable, the request is not at fault."""
    from loyalty_shared.db import create_engine
    from sqlalchemy import text

    url = await databases.fresh("refusing")
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = create_engine(pg_server_url)
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
    try:
        status, body = await _answer_of(url, "SELECT 1")
    finally:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        await admin.dispose()
    assert status == 503, body
    assert body["code"] == "service_unavailable" and body["retry-after"]


@pytest.mark.parametrize(
    ("setup", "sql"),
    [
        # a read-only replica after a failover (25006)
        ("SET TRANSACTION READ ONLY", "CREATE TEMP TABLE t (x int)"),
    ],
    ids=["read-only"],
)
async def test_a_read_only_or_locked_database_is_a_503(databases, setup, sql):
    url = await databases.fresh("unavailable")
    status, body = await _answer_of(url, sql, setup=setup)
    assert status == 503, body
    assert body["code"] == "service_unavailable" and body["retry-after"]


async def test_a_statement_at_fault_is_still_a_500(databases):
    """The taxonomy does not hide bugs: a statement the database rejects for itself is a 500."""
    url = await databases.fresh("faulty")
    status, body = await _answer_of(url, "SELECT * FROM no_such_table")
    assert status == 500, body


async def test_a_lock_not_granted_in_time_is_a_503(databases):
    """A lock timeout (55P03) is a conflict with concurrent work: retry, not a bug."""
    from loyalty_shared.db import create_engine
    from sqlalchemy import text

    url = await databases.fresh("locked")
    holder = create_engine(url)
    async with holder.connect() as conn:
        await conn.execute(text("CREATE TABLE held (x int)"))
        await conn.commit()
        await conn.execute(text("LOCK TABLE held IN ACCESS EXCLUSIVE MODE"))
        status, body = await _answer_of(
            url, "SELECT * FROM held", setup="SET LOCAL lock_timeout = '50ms'"
        )
        await conn.rollback()
    await holder.dispose()
    assert status == 503, body
    assert body["code"] == "service_unavailable" and body["retry-after"]
