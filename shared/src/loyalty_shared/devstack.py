"""`make run`: the whole platform on one machine with nothing installed but Python.

Starts the embedded PostgreSQL (data under `LOYALTY_DATA_DIR/pg`), the embedded broker on
`LOYALTY_KAFKA_PORT` (unless `LOYALTY_KAFKA_BOOTSTRAP` names another), and the five services on
`LOYALTY_PORT_BASE + 1..5`, then the operator console on `+ 6`. Ctrl-C (or SIGTERM) stops the
console and the services, then the broker, then the database, and leaves no process behind. Data
survives a restart; events in flight come back through the outbox replay, since the embedded
broker keeps nothing.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request

from .db import EmbeddedCluster, database_name, ensure_database
from .kafka.broker import EmbeddedBroker, client_env, port_open
from .settings import DEV_API_KEYS, SERVICE_PORT_OFFSETS, PlatformSettings

SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
CONSOLE = "console"  # no database; started once the five answer, and stopped first


def say(message: str) -> None:
    print(f"[loyalty] {message}", flush=True)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):  # not up yet, or not ours
        return False


class Stack:
    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.expanduser().resolve()
        self.cluster: EmbeddedCluster | None = None
        self.broker: EmbeddedBroker | None = None
        self.services: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        say(f"data directory: {self.data_dir}")
        self.cluster = EmbeddedCluster(self.data_dir / "pg")
        say(f"PostgreSQL (embedded) on socket {self.cluster.socket_dir}")
        urls = {}
        for name in SERVICES:
            url = self.cluster.url(database_name(name))
            asyncio.run(ensure_database(url, database_name(name)))
            urls[name] = url
        bootstrap = self.settings.kafka_bootstrap
        if not bootstrap:
            self.broker = EmbeddedBroker(
                self.settings.kafka_port, log_path=self.data_dir / "broker.log"
            ).start()
            bootstrap = self.broker.bootstrap
            say(f"Kafka broker (embedded tansu, in memory) on {bootstrap}")
        taken = [p for p in self._service_ports() if port_open("127.0.0.1", p)]
        if taken:
            raise RuntimeError(f"ports already in use: {taken}; set LOYALTY_PORT_BASE")
        keys = os.environ.get("LOYALTY_API_KEYS") or DEV_API_KEYS
        # The embedded broker's quirks (no idempotent producers, a short fetch wait), unless the
        # environment says otherwise; a real Kafka (LOYALTY_KAFKA_BOOTSTRAP) gets the defaults.
        base = client_env() if self.broker is not None else dict(os.environ)
        for name in SERVICES:
            env = {
                **base,
                f"{name.upper()}_DATABASE_URL": urls[name],
                "LOYALTY_KAFKA_BOOTSTRAP": bootstrap,
                "LOYALTY_API_KEYS": keys,
                "LOYALTY_DATA_DIR": str(self.data_dir),
            }
            self.services[name] = subprocess.Popen(
                [sys.executable, "-m", f"loyalty_{name}", "serve"],
                env=env,
                start_new_session=True,  # Ctrl-C reaches the runner only; it stops them in order
            )
        self._wait_healthy()
        self.services[CONSOLE] = subprocess.Popen(
            [sys.executable, "-m", "loyalty_console", "serve"],
            env={**os.environ, "LOYALTY_API_KEYS": keys},
            start_new_session=True,
        )
        self._wait_healthy([CONSOLE])
        say("the platform is up:")
        for name in SERVICES:
            port = self.settings.port_base + SERVICE_PORT_OFFSETS[name]
            say(f"  {name:<10} http://127.0.0.1:{port}   (docs: /docs)")
        port = self.settings.port_base + SERVICE_PORT_OFFSETS[CONSOLE]
        say(f"  {CONSOLE:<10} http://127.0.0.1:{port}   (sign in with an API key)")
        if not os.environ.get("LOYALTY_API_KEYS"):
            say("API key: dev-key (every scope) -- set LOYALTY_API_KEYS to use your own")
        say("press Ctrl-C to stop")

    def _service_ports(self) -> list[int]:
        names = [*SERVICES, CONSOLE]
        return [self.settings.port_base + SERVICE_PORT_OFFSETS[name] for name in names]

    def _wait_healthy(self, names: list[str] = SERVICES, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in list(pending):
                process = self.services[name]
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} service exited with {process.returncode}")
                if _healthy(self.settings.port_base + SERVICE_PORT_OFFSETS[name]):
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"services not healthy after {timeout}s: {sorted(pending)}")
            time.sleep(0.2)

    def watch(self) -> int:
        while not self.stopping:
            for name, process in self.services.items():
                if process.poll() is not None and not self.stopping:
                    say(f"the {name} service exited with {process.returncode}; stopping")
                    return 1
            time.sleep(0.5)
        return 0

    def stop(self) -> None:
        self.stopping = True
        console = self.services.get(CONSOLE)
        if console is not None and console.poll() is None:
            console.send_signal(signal.SIGTERM)  # the console first: it calls the others
        for process in self.services.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.services.items():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                say(f"the {name} service did not stop in time; killing it")
                process.kill()
                process.wait()
        if self.broker is not None:
            self.broker.stop()
        if self.cluster is not None:
            self.cluster.stop()
        say("stopped")


def main() -> int:
    stack = Stack(PlatformSettings())

    def request_stop(signum: int, frame: object) -> None:
        stack.stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    code = 0
    try:
        stack.start()
        code = stack.watch()
    except Exception as exc:  # say why, then clean up everything we started
        say(f"failed: {exc}")
        code = 1
    finally:
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
