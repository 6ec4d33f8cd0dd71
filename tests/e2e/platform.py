"""The whole platform started as a user starts it (`make run`), for the end-to-end tests.

`Platform` runs `make run` in its own session with its own `LOYALTY_DATA_DIR`, port base and
broker port, waits for "press Ctrl-C to stop", and stops it as a terminal's Ctrl-C does (SIGINT
to the whole foreground process group). `free_ports()` picks a port base whose six service ports
and broker port are free.

For debugging a journey against a platform that is already running, set
`LOYALTY_E2E_PORT_BASE` (and start it yourself with that `LOYALTY_PORT_BASE`): `Platform.start`
then only waits for it to answer and `interrupt` leaves it alone.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

REPO = Path(__file__).resolve().parents[2]
API_KEY = "dev-key"
SERVICE_OFFSETS = {"member": 1, "points": 2, "coupon": 3, "notifier": 4, "segmenter": 5}

T = TypeVar("T")


def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    """One HTTP call with the dev key and nothing but the standard library."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def leftovers(data_dir: Path, kafka_port: int) -> list[str]:
    """Processes still running that belong to this platform (its data dir or broker port)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(data_dir) in cmdline or f"127.0.0.1:{kafka_port}" in cmdline:
            found.append(f"{proc.pid}: {cmdline}")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(low: int = 20000, high: int = 40000) -> tuple[int, int]:
    """A port base (services on base + 1..6) and a broker port (base + 9), all free now."""
    for _ in range(50):
        base = random.randrange(low, high, 10)
        if all(_port_free(base + offset) for offset in (1, 2, 3, 4, 5, 6, 9)):
            return base, base + 9
    raise RuntimeError("no free port range found")


def wait_for(check: Callable[[], T], what: str, timeout: float = 45, every: float = 0.2) -> T:
    """Poll `check` until it answers something true; its last answer in the failure."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")


class Platform:
    def __init__(self, data_dir: Path, port_base: int, kafka_port: int) -> None:
        self.data_dir = data_dir
        self.port_base = port_base
        self.kafka_port = kafka_port
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.external = False
        self._mark = 0
        self._reader: threading.Thread | None = None

    @classmethod
    def fresh(cls, data_dir: Path) -> Platform:
        """A platform with its own data dir on free ports, or the one named by
        `LOYALTY_E2E_PORT_BASE` (already running)."""
        existing = os.environ.get("LOYALTY_E2E_PORT_BASE")
        if existing:
            platform = cls(data_dir, int(existing), int(existing) + 9)
            platform.external = True
            return platform
        return cls(data_dir, *free_ports())

    def url(self, offset: int, path: str) -> str:
        return f"http://127.0.0.1:{self.port_base + offset}{path}"

    def base_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port_base + SERVICE_OFFSETS[service]}"

    def start(self, timeout: float = 180) -> None:
        if self.external:
            wait_for(
                lambda: call("GET", self.url(1, "/healthz"))[0] == 200, "the platform", timeout
            )
            return
        env = {
            **os.environ,
            "LOYALTY_DATA_DIR": str(self.data_dir),
            "LOYALTY_PORT_BASE": str(self.port_base),
            "LOYALTY_KAFKA_PORT": str(self.kafka_port),
        }
        env.pop("LOYALTY_API_KEYS", None)
        env.pop("LOYALTY_KAFKA_BOOTSTRAP", None)
        self._mark = len(self.output)
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
                self._drain()
                return
            if time.monotonic() > deadline:
                break
        raise AssertionError("make run did not come up:\n" + "".join(self.output[-40:]))

    def _drain(self) -> None:
        """Keep reading the platform's output (the services log a lot), so that a full pipe
        never blocks them; the lines are kept for `interrupt`'s checks."""
        process = self.process
        assert process is not None and process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                self.output.append(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def interrupt(self, timeout: float = 60) -> None:
        """Ctrl-C in a terminal: SIGINT to the whole foreground process group."""
        if self.external:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self._reader is not None:
                self._reader.join(timeout=10)
        out = "".join(self.output[self._mark :])
        assert "[loyalty] stopped" in out, out[-4000:]

    def tail(self, lines: int = 60) -> str:
        return "".join(self.output[-lines:])
