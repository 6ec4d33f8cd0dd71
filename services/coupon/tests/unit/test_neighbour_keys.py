"""The key the coupon service presents to each neighbour is one that holds the scope its calls
need, not whichever key comes first in LOYALTY_API_KEYS (an admin key, or one that would make
every exchange answer 403)."""

from __future__ import annotations

from types import SimpleNamespace

from loyalty_coupon.adapters.neighbours import Neighbours
from loyalty_shared.auth import key_with_scope

SPEC = "ops-admin=admin;till=events:write;ledger=points:write,members:read;reader=members:read"


def _runtime() -> SimpleNamespace:
    return SimpleNamespace(settings=SimpleNamespace(api_keys=SPEC, port_base=8000))


def _presented(client) -> str:
    return client.headers["authorization"].removeprefix("Bearer ")


def test_each_neighbour_gets_a_key_with_the_scope_its_calls_need():
    neighbours = Neighbours()
    runtime = _runtime()
    assert _presented(neighbours.points(runtime).client) == "ledger"
    assert _presented(neighbours.segmenter(runtime).client) == "reader"  # fewest scopes
    assert _presented(neighbours.member(runtime).client) == "reader"


def test_no_key_with_the_scope_sends_none():
    assert key_with_scope("ops-admin=admin", "points:write") == ""
