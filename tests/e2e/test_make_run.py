"""`make run` as a user runs it: up, sign-up → points over curl-like HTTP, Ctrl-C, nothing left
running, up again with the same members and balances."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": "Bearer dev-key", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def leftovers(data_dir: Path, kafka_port: int) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline or f"127.0.0.1:{kafka_port}" in cmdline:
            found.append(f"{proc.pid}: {cmdline}")
    return found


class Platform:
    def __init__(self, data_dir: Path, port_base: int, kafka_port: int) -> None:
        self.data_dir = data_dir
        self.port_base = port_base
        self.kafka_port = kafka_port
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def url(self, offset: int, path: str) -> str:
        return f"http://127.0.0.1:{self.port_base + offset}{path}"

    def start(self, timeout: float = 180) -> None:
        env = {
            **os.environ,
            "LOYALTY_DATA_DIR": str(self.data_dir),
            "LOYALTY_PORT_BASE": str(self.port_base),
            "LOYALTY_KAFKA_PORT": str(self.kafka_port),
        }
        env.pop("LOYALTY_API_KEYS", None)
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if "press Ctrl-C to stop" in line:
                return
            if time.monotonic() > deadline:
                break
        raise AssertionError("make run did not come up:\n" + "".join(self.output[-40:]))

    def interrupt(self, timeout: float = 60) -> None:
        """Ctrl-C in a terminal: SIGINT to the whole foreground process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        out, _ = self.process.communicate(timeout=timeout)
        self.output.append(out)
        assert "[loyalty] stopped" in out, "".join(self.output[-40:])


def wait_for(check, what: str, timeout: float = 45):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_make_run_survives_ctrl_c_and_restart(tmp_path: Path):
    port_base = random.randrange(20000, 40000, 10)
    kafka_port = port_base + 9
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
