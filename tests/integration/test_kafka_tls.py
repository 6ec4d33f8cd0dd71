"""The services over TLS, for real: a TLS-terminating proxy (Python `ssl`, asyncio) in front of the
embedded broker, which advertises the proxy as its address, so that every client reaches the
broker through TLS only. The certificates (a test CA, a server certificate for 127.0.0.1 and
localhost, and an unrelated CA) are made here with `cryptography`.

- The points service with `LOYALTY_KAFKA_SECURITY_PROTOCOL=SSL` and the test CA creates its
  topics, consumes and publishes through TLS: a `member.registered` published through TLS by an
  independent client (confluent-kafka) yields 100 signup points, and the `points.credited` it
  publishes is readable through TLS, with its content-type header.
- With a CA that did not sign the broker's certificate the service starts, serves /healthz and
  retries (so a corrected or renewed CA file is picked up without a restart), logs an error that
  names the broker and says "certificate verify failed", and /readyz answers 503 with that reason.

SASL cannot be tested on the embedded broker (tests/test_kafka_security.py says why); its
arguments are tested there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import loyalty_points.bootstrap
import orjson
import pytest
import pytest_asyncio
from loyalty_shared.events import make_event
from loyalty_shared.events.members import MemberRegistered
from loyalty_shared.kafka.broker import free_port
from loyalty_shared.settings import SERVICE_PORT_OFFSETS
from loyalty_shared.testing import (
    BrokerProxy,
    DatabaseFactory,
    ProxiedBroker,
    start_service,
    until,
)

# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path  # the CA that signed the broker's certificate
    wrong_ca: Path  # a CA that signed nothing here
    server_cert: Path
    server_key: Path


def _make_pki(root: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def ca(common: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("loyalty test cluster CA")
    _, wrong_cert = ca("some other CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("loyalty-kafka-bootstrap"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pki = Pki(root / "ca.crt", root / "wrong-ca.crt", root / "server.crt", root / "server.key")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.wrong_ca.write_bytes(wrong_cert.public_bytes(pem))
    pki.server_cert.write_bytes(server_cert.public_bytes(pem))
    pki.server_key.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


# ---------------------------------------------------------------------------------------------
# The TLS-terminating proxy and the broker behind it
# ---------------------------------------------------------------------------------------------


class TlsProxy(BrokerProxy):
    """TLS on 127.0.0.1:<port>, plain TCP to the broker behind it."""

    name = "tls-proxy"

    def __init__(self, pki: Pki, upstream_port: int) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        super().__init__(upstream_port, ssl=context)

    @property
    def handshakes(self) -> int:
        """TLS connections established and forwarded (the handshake completes before a
        connection is handed over)."""
        return self.connections


class TlsBroker(ProxiedBroker):
    """The embedded broker behind a TlsProxy; it advertises the proxy as its address."""

    def __init__(self, pki: Pki) -> None:
        super().__init__(TlsProxy(pki, free_port()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("kafka-tls"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[TlsBroker]:
    with TlsBroker(pki) as broker:
        yield broker  # type: ignore[misc]


def independent_client_config(broker: TlsBroker, ca: Path) -> dict[str, Any]:
    """confluent-kafka (librdkafka) through the proxy, verifying the broker's certificate and
    its address (librdkafka checks the host name by default)."""
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
    }


def registered(member_id: str) -> Any:
    now = dt.datetime.now(dt.UTC)
    return make_event(
        "member.registered",
        MemberRegistered(
            member_id=member_id,
            card_no=f"88{secrets.randbelow(10**11):011d}",
            referral_code=secrets.token_hex(3).upper(),
            registered_at=now,
        ),
        subject=member_id,
        source="loyalty/member",
        time=now,
    )


def publish_independently(config: dict[str, Any], topic: str, event: Any) -> None:
    from confluent_kafka import Producer

    producer = Producer(config)
    producer.produce(
        topic,
        event.encode(),
        key=event.key.encode(),
        headers=[("content-type", b"application/cloudevents+json")],
    )
    assert producer.flush(15) == 0, "the independent producer could not deliver through TLS"


def find_independently(
    config: dict[str, Any], topic: str, subject: str, timeout: float = 30.0
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The first CloudEvent about `subject` on the topic, and its headers, read through TLS."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            **config,
            "group.id": f"independent-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            body = orjson.loads(message.value())
            if body.get("subject") == subject:
                return body, list(message.headers() or [])
        raise AssertionError(f"no event about {subject} on {topic} after {timeout}s")
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------------------
# The points service through TLS
# ---------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def points_over_tls(
    databases: DatabaseFactory, tls_broker: TlsBroker, pki: Pki
) -> AsyncIterator[Any]:
    service = await start_service(
        loyalty_points.bootstrap.definition(),
        database_url=await databases.fresh("tls_points"),
        bootstrap=tls_broker.bootstrap,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=pki.ca,
    )
    try:
        yield service
    finally:
        await service.stop()


async def test_the_points_service_consumes_and_publishes_through_tls(
    points_over_tls: Any, tls_broker: TlsBroker, pki: Pki
) -> None:
    runtime = points_over_tls.runtime
    assert runtime.consumer is not None
    # its admin client created the topics, its consumer joined its group: all through TLS
    await asyncio.wait_for(runtime.consumer.assigned.wait(), 60)
    assert tls_broker.proxy.handshakes >= 2

    member_id = f"tls-{secrets.token_hex(4)}"
    config = independent_client_config(tls_broker, pki.ca)
    await asyncio.to_thread(publish_independently, config, "loyalty.members", registered(member_id))

    async def balance() -> Any:
        body = (await points_over_tls.client.get(f"/v1/accounts/{member_id}")).json()
        return body if body["available"] == 100 else None

    account = await until(balance, "the signup points, consumed through TLS", timeout=60)
    assert account["lifetime_earned"] == 100

    credited, headers = await asyncio.to_thread(
        find_independently, config, "loyalty.points", member_id
    )
    assert credited["type"] == "points.credited"
    assert credited["data"]["points"] == 100
    assert ("content-type", b"application/cloudevents+json") in headers

    ready = await points_over_tls.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_plain_text_is_not_spoken_by_the_tls_listener(tls_broker: TlsBroker) -> None:
    from loyalty_shared.kafka.connection import connection_problem
    from loyalty_shared.settings import PlatformSettings

    problem = await connection_problem(
        tls_broker.bootstrap, PlatformSettings(kafka_security_protocol="PLAINTEXT"), timeout=3
    )
    assert problem is not None and problem.startswith(tls_broker.bootstrap)


# ---------------------------------------------------------------------------------------------
# A wrong CA: what the service does
# ---------------------------------------------------------------------------------------------


def _serve(service: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m loyalty_<service> serve`, as a pod runs it, logging to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", f"loyalty_{service}", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow
async def test_a_wrong_ca_is_logged_naming_the_broker_and_readiness_says_why(
    databases: DatabaseFactory, tls_broker: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "points.log"
    env = {
        **os.environ,
        "POINTS_DATABASE_URL": await databases.fresh("tls_wrong_ca"),
        "LOYALTY_KAFKA_BOOTSTRAP": tls_broker.bootstrap,
        "LOYALTY_KAFKA_SECURITY_PROTOCOL": "SSL",
        "LOYALTY_KAFKA_SSL_CA_FILE": str(pki.wrong_ca),
        "LOYALTY_PORT_BASE": str(port - SERVICE_PORT_OFFSETS["points"]),
        "LOYALTY_API_KEYS": "k=admin",
        "LOYALTY_DATA_DIR": str(tmp_path),
        "LOYALTY_SCHEDULER_ENABLED": "false",
        "LOYALTY_LOG_LEVEL": "INFO",
    }
    process = _serve("points", env, log_path)
    try:
        url = f"http://127.0.0.1:{port}"

        async def refused() -> Any:
            assert process.poll() is None, log_path.read_text()
            for line in log_path.read_text(errors="replace").splitlines():
                # the service's own line (aiokafka's records are JSON lines too, without it)
                if line.startswith("{") and '"broker_problem"' in line:
                    return orjson.loads(line)
            return None

        entry = await until(refused, "the service to log the refused TLS handshake", timeout=60)
        assert entry["level"] == "error"
        assert entry["event"] == "broker_unreachable"  # the admin client creating the topics
        assert entry["broker_problem"].startswith(f"{tls_broker.bootstrap}: ")
        assert "certificate verify failed" in entry["broker_problem"]
        assert entry["security_protocol"] == "SSL"
        assert entry["ssl_ca_file"] == str(pki.wrong_ca)

        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200  # alive, and retrying
            ready = await client.get("/readyz")
        assert ready.status_code == 503
        broker = ready.json()["checks"]["broker"]
        assert broker.startswith(f"unavailable: {tls_broker.bootstrap}: certificate verify failed")
        assert process.poll() is None, "the service keeps running (and retrying)"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
