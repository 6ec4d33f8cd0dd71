"""`make run` as a user runs it: up, sign-up → points over curl-like HTTP, Ctrl-C, nothing left
running, up again with the same members and balances."""

from __future__ import annotations

from pathlib import Path

import pytest

from .platform import Platform, call, free_ports, leftovers, wait_for

pytestmark = pytest.mark.slow


def test_make_run_survives_ctrl_c_and_restart(tmp_path: Path):
    port_base, kafka_port = free_ports()
    platform = Platform(tmp_path / "run", port_base, kafka_port)

    platform.start()
    try:
        assert "dev-key" in "".join(platform.output)
        status, member = call("POST", platform.url(1, "/v1/members"), {"phone": "13512345678"})
        assert status == 201, member
        member_id = member["member_id"]
        wait_for(
            lambda: (
                call("GET", platform.url(2, f"/v1/accounts/{member_id}"))[1]["available"] == 100
            ),
            "the signup bonus",
        )
    finally:
        platform.interrupt()
    assert leftovers(platform.data_dir, kafka_port) == []

    platform.start()
    try:
        status, again = call("GET", platform.url(1, f"/v1/members/{member_id}"))
        assert status == 200 and again["phone"] == "+8613512345678"
        account = call("GET", platform.url(2, f"/v1/accounts/{member_id}"))[1]
        assert account["available"] == 100 and account["lifetime_earned"] == 100
        # A sign-up after the restart flows through the fresh broker as well.
        status, second = call("POST", platform.url(1, "/v1/members"), {"phone": "13512345679"})
        assert status == 201
        wait_for(
            lambda: (
                call("GET", platform.url(2, f"/v1/accounts/{second['member_id']}"))[1]["available"]
                == 100
            ),
            "the second signup bonus",
        )
        # The replayed first sign-up was not credited twice.
        account = call("GET", platform.url(2, f"/v1/accounts/{member_id}"))[1]
        assert account["available"] == 100
    finally:
        platform.interrupt()
    assert leftovers(platform.data_dir, kafka_port) == []
