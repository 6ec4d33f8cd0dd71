"""The life of a points exchange (a coupon bought with points) as a small state machine.

An exchange is acted on by the client's request (and its retries under the same
Idempotency-Key) and by the `exchange-reconcile` job. Each moves an exchange only along the
transitions below, by a guarded write (`... WHERE status = <from>`), and acts (issues the coupon,
gives the points back, answers the client) only when its write won; whoever loses reads the
state the winner reached and goes by it.

    pending ──► issued                    the coupon was issued: the points stay spent
       │  └───► failed                    the points service refused the debit: nothing taken
       └──────► refunding ──► refunded    no coupon; the points were given back
                  ▲    │  └─► failed      no coupon, and the debit turned out never to have happened
                  │    ▼
               refund_pending             no coupon; the points are to be given back (by the job)

`pending → pending` is a request taking the exchange up again (a retry) or noting why the points
service could not answer; `refunding → refunding` is the job taking over a refund that a crash
left half-done. `refunding` is the claim on a refund: only its claimant calls the points service
to give the points back, so they come back once. Nothing ever returns to `pending`, and
`issued`, `failed` and `refunded` are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Literal


class ExchangeStatus(StrEnum):
    PENDING = "pending"
    ISSUED = "issued"
    FAILED = "failed"
    REFUNDING = "refunding"
    REFUND_PENDING = "refund_pending"
    REFUNDED = "refunded"


_S = ExchangeStatus

TRANSITIONS: Mapping[ExchangeStatus, frozenset[ExchangeStatus]] = MappingProxyType(
    {
        _S.PENDING: frozenset({_S.PENDING, _S.ISSUED, _S.FAILED, _S.REFUNDING}),
        _S.REFUNDING: frozenset({_S.REFUNDING, _S.REFUNDED, _S.REFUND_PENDING, _S.FAILED}),
        _S.REFUND_PENDING: frozenset({_S.REFUNDING}),
        _S.ISSUED: frozenset(),
        _S.FAILED: frozenset(),
        _S.REFUNDED: frozenset(),
    }
)

FINAL: frozenset[ExchangeStatus] = frozenset(s for s, to in TRANSITIONS.items() if not to)

# What the reconcile job takes up: a refund still to make at once; an exchange left pending, or
# a refund left half-done, once nobody has touched it for this long (a live request renews it).
RECONCILE_AFTER = timedelta(minutes=10)
RECONCILED: frozenset[ExchangeStatus] = frozenset({_S.PENDING, _S.REFUNDING, _S.REFUND_PENDING})


class IllegalTransition(ValueError):
    """A programming error: code asked to move an exchange along a transition that does not
    exist."""

    def __init__(self, from_: ExchangeStatus, to: ExchangeStatus) -> None:
        super().__init__(f"an exchange does not go from {from_.value} to {to.value}")
        self.from_ = from_
        self.to = to


def can_move(from_: ExchangeStatus | str, to: ExchangeStatus | str) -> bool:
    return ExchangeStatus(to) in TRANSITIONS[ExchangeStatus(from_)]


def check_move(from_: ExchangeStatus | str, to: ExchangeStatus | str) -> None:
    if not can_move(from_, to):
        raise IllegalTransition(ExchangeStatus(from_), ExchangeStatus(to))


def decided(status: ExchangeStatus | str) -> bool:
    """Whether the exchange's outcome for the member is known: a coupon or none. Every state but
    `pending` is decided, since none leads back to it or from "no coupon" to `issued`."""
    return ExchangeStatus(status) is not _S.PENDING


def points_refund(status: ExchangeStatus | str) -> Literal["done", "pending"] | None:
    """How far giving the points back has got (the `points_refund` of a refusal), if it applies."""
    s = ExchangeStatus(status)
    if s is _S.REFUNDED:
        return "done"
    if s in (_S.REFUNDING, _S.REFUND_PENDING):
        return "pending"
    return None
