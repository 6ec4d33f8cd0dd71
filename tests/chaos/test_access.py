"""Access control over every endpoint of the five services (contract §3, "Auth").

Each service runs in-process on a fresh database; the test walks its routes (every /v1
operation, path parameters filled with dummy values) and asks, per operation:
- no key, or a wrong one (same length, a prefix, the key and more, another scheme) → 401
  `unauthorized` with `WWW-Authenticate: Bearer`;
- a valid key with no scope at all → 403 `forbidden` (no /v1 endpoint is open to any key);
- a key with every scope except the ones the contract's table lets in → 403 `forbidden`;
- a key with just one scope the table lets in → past the scope check (not 401 or 403);
and no answer is a 5xx. `/healthz`, `/readyz` and `/metrics` answer without a key.

The required scopes come from the contract's table, written out below endpoint by endpoint;
`test_the_code_asks_for_the_scopes_of_the_contract` checks that the routes' own scope
dependencies (`Scope(...)`, read from `require_scope`'s closure) say the same, so a new
endpoint fails here until its scope is decided against the contract.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest
from loyalty_shared.auth import ApiKeys
from loyalty_shared.service import create_app
from loyalty_shared.settings import ALL_SCOPES, ServiceSettings
from loyalty_shared.testing import TEST_KEY, DatabaseFactory, start_service

SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
EVERY_SCOPE = frozenset(ALL_SCOPES)


def scopes(*names: str) -> frozenset[str]:
    """Scopes any one of which lets the caller in."""
    assert set(names) <= EVERY_SCOPE, names
    return frozenset(names)


ADMIN = scopes("admin")
READ = scopes("members:read")  # contract §3: "a GET needs members:read unless listed"
CHECKOUT_OR_POINTS = scopes("events:write", "points:write")

# Contract §3's scope table, for every /v1 operation that is not a GET, by service. /v1/admin/*
# needs `admin` whatever its method; a GET needs `members:read` unless it is listed here.
CONTRACT: dict[str, dict[tuple[str, str], frozenset[str]]] = {
    "member": {
        # members:write: create, change and erase members; cards, identities, feedback
        ("POST", "/v1/members"): scopes("members:write"),
        ("PATCH", "/v1/members/{member_id}"): scopes("members:write"),
        ("DELETE", "/v1/members/{member_id}"): scopes("members:write"),
        ("POST", "/v1/members/{member_id}/identities"): scopes("members:write"),
        ("POST", "/v1/members/{member_id}/surveys"): scopes("members:write"),
        ("POST", "/v1/complaints"): scopes("members:write"),
        ("POST", "/v1/complaints/{ticket_id}/status"): scopes("members:write"),
        ("POST", "/v1/card-plans"): scopes("members:write"),
        ("POST", "/v1/card-batches"): scopes("members:write"),
        ("POST", "/v1/members/{member_id}/cards"): scopes("members:write"),
        ("POST", "/v1/members/{member_id}/cards:purchase"): scopes("members:write"),
        ("POST", "/v1/members/{member_id}/cards:bind"): scopes("members:write"),
        # events:write: POST /v1/orders, order status and refunds; check-ins
        ("POST", "/v1/orders"): scopes("events:write"),
        ("POST", "/v1/orders/{order_id}/status"): scopes("events:write"),
        ("POST", "/v1/orders/{order_id}/refunds"): scopes("events:write"),
        ("POST", "/v1/members/{member_id}/check-ins"): scopes("events:write"),
        # admin: the tier ladder (reading it is a GET: members:read)
        ("PUT", "/v1/tiers"): ADMIN,
    },
    "points": {
        # points:write: adjustments, earning rules, stored-value top-ups
        ("POST", "/v1/accounts/{member_id}/adjustments"): scopes("points:write"),
        ("PUT", "/v1/rules/{code}"): scopes("points:write"),
        ("POST", "/v1/stored-value/{member_id}/top-ups"): scopes("points:write"),
        # points redemptions and their cancel are in both rows: events:write (what a checkout
        # does) and points:write
        ("POST", "/v1/redemptions"): CHECKOUT_OR_POINTS,
        ("POST", "/v1/redemptions/{redemption_id}/cancel"): CHECKOUT_OR_POINTS,
        # The contract grants stored-value spending to points:write; the points README adds
        # events:write (paying with stored value is what a checkout does), as for redemptions.
        ("POST", "/v1/stored-value/{member_id}/spends"): CHECKOUT_OR_POINTS,
        ("POST", "/v1/stored-value/spends/{spend_id}/refund"): CHECKOUT_OR_POINTS,
        # "without writing anything" (§5): a read in POST form, so the rule of a GET applies;
        # points:write is for changing the earning rules.
        ("POST", "/v1/rules:simulate"): READ,
    },
    "coupon": {
        # coupons:write: templates, campaigns, bulk issue, coupon exchange
        ("POST", "/v1/coupon-templates"): scopes("coupons:write"),
        ("POST", "/v1/campaigns"): scopes("coupons:write"),
        ("PATCH", "/v1/campaigns/{code}"): scopes("coupons:write"),
        ("POST", "/v1/campaigns/{code}/issue"): scopes("coupons:write"),
        ("POST", "/v1/members/{member_id}/coupons:exchange"): scopes("coupons:write"),
        # events:write: coupon validations and redemptions
        ("POST", "/v1/validations"): scopes("events:write"),
        ("POST", "/v1/redemptions"): scopes("events:write"),
    },
    "notifier": {
        # notify:write: templates, preferences
        ("PUT", "/v1/templates/{event_type}/{channel}/{locale}"): scopes("notify:write"),
        ("DELETE", "/v1/templates/{event_type}/{channel}/{locale}"): scopes("notify:write"),
        ("PUT", "/v1/members/{member_id}/preferences"): scopes("notify:write"),
        # Not in the table: marking an inbox message read is the notifier's only other write,
        # and notify:write is the notifier's write scope.
        ("POST", "/v1/members/{member_id}/inbox/{message_id}/read"): scopes("notify:write"),
    },
    "segmenter": {
        # admin: segments (reading them is a GET: members:read)
        ("POST", "/v1/segments"): ADMIN,
        ("PUT", "/v1/segments/{code}"): ADMIN,
        ("POST", "/v1/segments:preview"): ADMIN,
    },
}
# Endpoints every service has (the platform's own); the table above must not be missing them.
# admin (§2, "Dead letters can be fed back"): listing and redriving dead letters
PLATFORM: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/v1/admin/dead-letters"): ADMIN,
    ("POST", "/v1/admin/dead-letters:redrive"): ADMIN,
}
for _table in CONTRACT.values():
    _table.update(PLATFORM)

# /v1 operations open to any valid key (require_scope(None)). None: the contract names a scope
# for every endpoint. An entry needs its reason and a line of the contract that allows it.
ANY_KEY: dict[str, set[tuple[str, str]]] = {name: set() for name in SERVICES}

# Scope checks that are not `Scope(...)` and so cannot be read from a closure: the function's
# qualified name and the scopes any one of which it lets in.
OTHER_CHECKS = {
    # "Redemptions are what a checkout does (events:write) or a points operator (points:write)"
    "loyalty_points.entrypoints.redemptions.checkout_or_points_writer": CHECKOUT_OR_POINTS,
}

KEYS: dict[str, frozenset[str]] = {
    TEST_KEY: EVERY_SCOPE,
    "noscope-key": frozenset(),
    **{f"only-{scope}": frozenset({scope}) for scope in ALL_SCOPES},
}
WRONG_KEYS = [
    "Bearer " + "x" * len(TEST_KEY),  # same length
    "Bearer " + TEST_KEY[:-1],  # a prefix
    "Bearer " + TEST_KEY + "x",  # the key and more
    "Basic " + TEST_KEY,  # another scheme
]


def contract_scopes(service: str, method: str, path: str) -> frozenset[str] | None:
    """The scopes that let a caller in, by the contract (None: any valid key)."""
    if (method, path) in ANY_KEY[service]:
        return None
    if path.startswith("/v1/admin/"):
        return ADMIN
    listed = CONTRACT[service].get((method, path))
    if listed is not None:
        return listed
    if method == "GET":
        return READ
    raise AssertionError(
        f"{service}: {method} {path} is not in this test's scope table: decide its scope "
        "against the contract (§3) and add it to CONTRACT"
    )


def without(allowed: frozenset[str]) -> str:
    return "without-" + "+".join(sorted(allowed))


def key_spec() -> str:
    keys = dict(KEYS)
    for table in CONTRACT.values():
        for allowed in {ADMIN, READ, *table.values()}:
            keys[without(allowed)] = EVERY_SCOPE - allowed
    return ";".join(f"{key}={','.join(sorted(granted))}" for key, granted in keys.items())


def v1_routes(app: Any) -> Iterator[tuple[str, str, Any]]:
    """(method, path, route) of every /v1 operation, however FastAPI nests included routers."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes holds them all
        routes: Any = app.routes
    else:
        routes = iter_route_contexts(app.routes)
    for route in routes:
        path = getattr(route, "path", "")
        if not path.startswith("/v1/") or getattr(route, "dependant", None) is None:
            continue
        for method in sorted(route.methods or ()):
            yield method, path, route


def scope_checks_in_code(route: Any) -> set[frozenset[str] | None]:
    """The scope checks among a route's dependencies, each as the scopes any one of which passes
    it (None: `require_scope(None)`, any valid key). A caller must pass every check."""
    found: set[frozenset[str] | None] = set()

    def walk(dependant: Any) -> None:
        for dependency in dependant.dependencies:
            call = dependency.call
            qualname = getattr(call, "__qualname__", "")
            if qualname.startswith("require_scope."):
                scope = inspect.getclosurevars(call).nonlocals["scope"]
                found.add(None if scope is None else frozenset({scope}))
            elif f"{getattr(call, '__module__', '')}.{qualname}" in OTHER_CHECKS:
                found.add(OTHER_CHECKS[f"{call.__module__}.{qualname}"])
            walk(dependency)

    walk(route.dependant)
    return found


def definition_of(name: str) -> Any:
    return importlib.import_module(f"loyalty_{name}.bootstrap").definition()


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "no-such-thing", path)


@pytest.mark.parametrize("name", SERVICES)
def test_the_code_asks_for_the_scopes_of_the_contract(name: str):
    settings = ServiceSettings.for_service(name, database_url="postgresql://unused/unused")
    app = create_app(definition_of(name), settings=settings, background=False)
    wrong = []
    seen = 0
    for method, path, route in v1_routes(app):
        seen += 1
        expected = contract_scopes(name, method, path)
        in_code = scope_checks_in_code(route)
        if in_code != {expected}:
            wrong.append(f"{method} {path}: the code checks {in_code}, the contract {expected}")
    assert seen > 5
    assert not wrong, "\n".join(wrong)
    routes = {(m, p) for m, p, _ in v1_routes(app)}
    stale = set(CONTRACT[name]) - routes
    assert not stale, f"endpoints in the table that {name} does not have: {stale}"


@pytest.mark.parametrize("name", SERVICES)
async def test_every_endpoint_refuses_a_missing_wrong_or_underscoped_key(
    name: str, databases: DatabaseFactory, kafka_bootstrap: str
):
    service = await start_service(
        definition_of(name),
        database_url=await databases.fresh(f"access_{name}"),
        bootstrap=kafka_bootstrap,
        background=False,
        # every endpoint answers a few dozen wrong keys from this one client: not throttled here
        # (the throttle has its own test, shared/tests/test_rate_limit.py)
        auth_failures_per_minute=0,
    )
    service.app.state.api_keys = ApiKeys(key_spec())
    client = service.client
    failures: list[str] = []

    async def ask(method: str, path: str, authorization: str | None) -> Any:
        headers = {"Authorization": authorization or ""}
        body = {} if method in ("POST", "PUT", "PATCH") else None
        response = await client.request(method, concrete(path), json=body, headers=headers)
        if response.status_code >= 500:
            failures.append(f"{method} {path} ({authorization}): {response.status_code}")
        return response

    def expect(response: Any, status: int, code: str, method: str, path: str, who: str) -> None:
        body = response.json() if response.content else {}
        if response.status_code != status or body.get("code") != code:
            failures.append(
                f"{method} {path} with {who}: {response.status_code} {body.get('code')}, "
                f"expected {status} {code}"
            )

    try:
        for endpoint in ("/healthz", "/readyz", "/metrics"):
            answer = await client.get(endpoint, headers={"Authorization": ""})
            assert answer.status_code == 200, (endpoint, answer.status_code, answer.text)

        operations = list(v1_routes(service.app))
        assert len(operations) > 5
        for method, path, _ in operations:
            allowed = contract_scopes(name, method, path)

            anonymous = await ask(method, path, None)
            expect(anonymous, 401, "unauthorized", method, path, "no key")
            if anonymous.headers.get("www-authenticate") != "Bearer":
                failures.append(f"{method} {path}: 401 without WWW-Authenticate: Bearer")
            for wrong in WRONG_KEYS:
                response = await ask(method, path, wrong)
                expect(response, 401, "unauthorized", method, path, f"'{wrong}'")

            if allowed is None:  # any valid key: checked by the contract test above
                continue
            response = await ask(method, path, "Bearer noscope-key")
            expect(response, 403, "forbidden", method, path, "a key without scopes")
            response = await ask(method, path, f"Bearer {without(allowed)}")
            expect(response, 403, "forbidden", method, path, f"every scope but {set(allowed)}")
            for scope in sorted(allowed):
                response = await ask(method, path, f"Bearer only-{scope}")
                if response.status_code in (401, 403):
                    failures.append(
                        f"{method} {path} with just {scope}: {response.status_code} "
                        f"{response.text[:200]}"
                    )
    finally:
        await service.stop()
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
