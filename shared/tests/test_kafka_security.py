"""The Kafka security settings (contract §3) as every client's arguments: TLS, SASL (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512), the combinations refused at start, the password kept out of
every log, and every aiokafka client of the platform built with them.

SASL is tested here, without a broker: the embedded broker (tansu 0.6, memory storage) can
require SASL, but then refuses the request that creates a SCRAM user too, so no login can
succeed on it. TLS is tested for real in tests/integration/test_kafka_tls.py.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from loyalty_shared.kafka import (
    IdempotentConsumer,
    KafkaSettingsError,
    OutboxRelay,
    connection_kwargs,
    ensure_topics,
    make_producer,
    producer_kwargs,
)
from loyalty_shared.kafka.connection import describe
from loyalty_shared.settings import PlatformSettings
from pydantic import ValidationError

PASSWORD = "pw-that-must-never-be-logged-7f3a"


def _env_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LOYALTY_KAFKA_* from the environment (the test plugin sets the embedded broker's)."""
    for name in list(os.environ):
        if name.startswith("LOYALTY_KAFKA_"):
            monkeypatch.delenv(name)


def settings(**values: Any) -> PlatformSettings:
    return PlatformSettings(kafka_bootstrap="kafka:9093", **values)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a client certificate signed by it, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("loyalty unit test CA"))
        .issuer_name(name("loyalty unit test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        x509.CertificateBuilder()
        .subject_name(name("loyalty-points"))
        .issuer_name(ca.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": root / "ca.crt",
        "cert": root / "user.crt",
        "key": root / "user.key",
        "garbage": root / "garbage.pem",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(client.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(pem_key(client_key))
    files["garbage"].write_text("not a certificate\n")
    return files


# ---------------------------------------------------------------------------------------------
# The settings and what they become
# ---------------------------------------------------------------------------------------------


async def test_the_defaults_are_plain_text_an_idempotent_producer_and_kafkas_fetch_wait(
    monkeypatch,
):
    _env_free(monkeypatch)
    defaults = PlatformSettings()
    assert defaults.kafka_security_protocol == "PLAINTEXT"
    assert defaults.kafka_fetch_max_wait_ms == 500
    assert connection_kwargs(defaults) == {"security_protocol": "PLAINTEXT"}
    assert producer_kwargs(defaults) == {
        "security_protocol": "PLAINTEXT",
        "enable_idempotence": True,
        "acks": "all",
    }
    producer = make_producer("127.0.0.1:1", defaults)
    assert producer._txn_manager is not None  # aiokafka's idempotent producer state


def test_the_embedded_broker_turns_idempotence_off_and_shortens_the_fetch_wait(monkeypatch):
    from loyalty_shared.kafka.broker import CLIENT_ENV, client_env, client_settings

    _env_free(monkeypatch)
    for name, value in CLIENT_ENV.items():
        monkeypatch.setenv(name, value)
    embedded = PlatformSettings()
    assert embedded.kafka_idempotent_producer is False
    assert embedded.kafka_fetch_max_wait_ms == 100
    assert producer_kwargs(embedded)["enable_idempotence"] is False
    # what the environment says itself wins
    assert (
        client_env({"LOYALTY_KAFKA_IDEMPOTENT_PRODUCER": "true"})[
            "LOYALTY_KAFKA_IDEMPOTENT_PRODUCER"
        ]
        == "true"
    )
    assert client_settings({"LOYALTY_KAFKA_FETCH_MAX_WAIT_MS": "250"}) == {
        "kafka_idempotent_producer": False
    }


def test_settings_are_read_from_the_environment_in_any_case(monkeypatch, pki):
    _env_free(monkeypatch)
    monkeypatch.setenv("LOYALTY_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("LOYALTY_KAFKA_SASL_MECHANISM", "scram-sha-512")  # Strimzi's spelling
    monkeypatch.setenv("LOYALTY_KAFKA_SASL_USERNAME", "loyalty-points")
    monkeypatch.setenv("LOYALTY_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("LOYALTY_KAFKA_SSL_CA_FILE", str(pki["ca"]))
    monkeypatch.setenv("LOYALTY_KAFKA_SSL_CERT_FILE", "")  # an empty variable is unset
    monkeypatch.setenv("LOYALTY_KAFKA_IDEMPOTENT_PRODUCER", "false")
    monkeypatch.setenv("LOYALTY_KAFKA_FETCH_MAX_WAIT_MS", "50")
    read = PlatformSettings()
    assert read.kafka_security_protocol == "SASL_SSL"
    assert read.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert read.kafka_ssl_cert_file is None
    assert read.kafka_idempotent_producer is False and read.kafka_fetch_max_wait_ms == 50
    assert connection_kwargs(read)["sasl_plain_password"] == PASSWORD


def test_an_unknown_protocol_or_mechanism_is_refused():
    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        settings(kafka_security_protocol="TLS")
    with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="GSSAPI")


def test_ssl_verifies_the_broker_against_the_ca_file(pki):
    options = connection_kwargs(
        settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=pki["ca"])
    )
    assert set(options) == {"security_protocol", "ssl_context"}
    assert options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    subjects = [dict(x[0] for x in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "loyalty unit test CA"} in subjects


def test_ssl_without_a_ca_file_trusts_the_systems_cas():
    # MSK, Confluent Cloud: brokers with publicly trusted certificates
    options = connection_kwargs(settings(kafka_security_protocol="SSL"))
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_mutual_tls_loads_the_client_certificate_and_key(pki):
    options = connection_kwargs(
        settings(
            kafka_security_protocol="SSL",
            kafka_ssl_ca_file=pki["ca"],
            kafka_ssl_cert_file=pki["cert"],
            kafka_ssl_key_file=pki["key"],
        )
    )
    assert isinstance(options["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_passes_the_mechanism_and_the_credentials(pki, protocol, mechanism):
    options = connection_kwargs(
        settings(
            kafka_security_protocol=protocol,
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="loyalty-points",
            kafka_sasl_password=PASSWORD,
            **({"kafka_ssl_ca_file": pki["ca"]} if protocol == "SASL_SSL" else {}),
        )
    )
    assert options["security_protocol"] == protocol
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "loyalty-points"
    assert options["sasl_plain_password"] == PASSWORD
    assert ("ssl_context" in options) == (protocol == "SASL_SSL")


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "LOYALTY_KAFKA_SASL_MECHANISM"),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512"},
            "LOYALTY_KAFKA_SASL_USERNAME",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "u",
            },
            "LOYALTY_KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "u"},
            "LOYALTY_KAFKA_SASL_MECHANISM, LOYALTY_KAFKA_SASL_USERNAME set, but "
            "LOYALTY_KAFKA_SECURITY_PROTOCOL=PLAINTEXT",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_sasl_password": PASSWORD},
            "LOYALTY_KAFKA_SASL_PASSWORD set, but LOYALTY_KAFKA_SECURITY_PROTOCOL=SSL",
        ),
        (
            {"kafka_ssl_ca_file": "/etc/ca.crt"},
            "LOYALTY_KAFKA_SSL_CA_FILE set, but LOYALTY_KAFKA_SECURITY_PROTOCOL=PLAINTEXT",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/nonexistent/ca.crt"},
            "LOYALTY_KAFKA_SSL_CA_FILE=/nonexistent/ca.crt: no such file",
        ),
    ],
)
def test_a_combination_that_cannot_work_is_refused_naming_the_setting(values, named):
    with pytest.raises(KafkaSettingsError) as refused:
        connection_kwargs(settings(**values))
    assert named in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_a_certificate_without_its_key_or_a_file_that_is_no_pem_is_refused(pki):
    with pytest.raises(KafkaSettingsError, match="LOYALTY_KAFKA_SSL_CERT_FILE is set without "):
        connection_kwargs(
            settings(
                kafka_security_protocol="SSL",
                kafka_ssl_ca_file=pki["ca"],
                kafka_ssl_cert_file=pki["cert"],
            )
        )
    with pytest.raises(KafkaSettingsError, match=r"LOYALTY_KAFKA_SSL_CA_FILE=.*not a PEM"):
        connection_kwargs(settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=pki["garbage"]))
    with pytest.raises(KafkaSettingsError, match=r"LOYALTY_KAFKA_SSL_CERT_FILE=.*not a PEM"):
        connection_kwargs(
            settings(
                kafka_security_protocol="SSL",
                kafka_ssl_cert_file=pki["garbage"],
                kafka_ssl_key_file=pki["key"],
            )
        )


def test_the_password_shows_in_no_repr_and_no_description(pki):
    secured = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="loyalty-points",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_ca_file=pki["ca"],
    )
    assert PASSWORD not in repr(secured) and PASSWORD not in str(secured)
    assert PASSWORD not in secured.model_dump_json()
    facts = describe(secured)
    assert facts == {
        "bootstrap": "kafka:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "loyalty-points",
        "ssl_ca_file": str(pki["ca"]),
    }


# ---------------------------------------------------------------------------------------------
# Every client the platform builds gets them
# ---------------------------------------------------------------------------------------------


class _Refused(Exception):
    pass


def _recorder(built: list[tuple[str, dict[str, Any]]], kind: str, *, refuse: bool) -> type:
    """A stand-in for an aiokafka client class that records its arguments; its start() raises
    when `refuse` (so that the caller stops there)."""

    class Client:
        def __init__(self, *topics: str, **kwargs: Any) -> None:
            built.append((kind, kwargs))

        def subscribe(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def start(self) -> None:
            if refuse:
                raise _Refused(kind)

        async def stop(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def partitions_for(self, topic: str) -> set[int]:
            return {0}

    return Client


async def test_every_client_is_built_with_the_security_settings(monkeypatch, pki):
    import aiokafka
    from loyalty_shared.kafka import consumer, outbox, topics

    built: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(outbox, "AIOKafkaProducer", _recorder(built, "producer", refuse=False))
    monkeypatch.setattr(consumer, "AIOKafkaConsumer", _recorder(built, "consumer", refuse=False))
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", _recorder(built, "probe", refuse=True))
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", _recorder(built, "admin", refuse=True))
    secured = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="loyalty-points",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_ca_file=pki["ca"],
        kafka_idempotent_producer=True,
        kafka_fetch_max_wait_ms=500,
    )

    with pytest.raises(_Refused):  # the admin client that creates topics
        await ensure_topics("kafka:9093", ["t"], 1, attempts=1, settings=secured)
    relay = OutboxRelay(None, "kafka:9093", service="points", topics=["t"], settings=secured)  # type: ignore[arg-type]
    await relay._start_producer()  # the relay's producer
    with pytest.raises(_Refused):  # the probe that asks whether the broker lost its data
        await relay._replay_if_broker_forgot()
    idempotent = IdempotentConsumer(
        None,  # type: ignore[arg-type]
        "kafka:9093",
        service="points",
        group="loyalty-points",
        topics=["t"],
        handlers=None,  # type: ignore[arg-type]
        settings=secured,
    )
    await idempotent._start()  # the consumer, then its dead-letter producer

    kinds = [kind for kind, _ in built]
    assert kinds == ["admin", "producer", "probe", "consumer", "producer"]
    for kind, kwargs in built:
        assert kwargs["security_protocol"] == "SASL_SSL", kind
        assert isinstance(kwargs["ssl_context"], ssl.SSLContext), kind
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512", kind
        assert kwargs["sasl_plain_username"] == "loyalty-points", kind
        assert kwargs["sasl_plain_password"] == PASSWORD, kind
    producers = [kwargs for kind, kwargs in built if kind == "producer"]
    assert len(producers) == 2 and all(p["enable_idempotence"] is True for p in producers)
    assert all(p["acks"] == "all" for p in producers)
    [consumed] = [kwargs for kind, kwargs in built if kind == "consumer"]
    assert consumed["fetch_max_wait_ms"] == 500


# ---------------------------------------------------------------------------------------------
# What a service does with settings that cannot work
# ---------------------------------------------------------------------------------------------


def test_a_service_with_settings_that_cannot_work_exits_at_start_naming_the_setting(tmp_path):
    env = {
        **os.environ,
        "POINTS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/never-reached",
        "LOYALTY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LOYALTY_KAFKA_SASL_USERNAME": "loyalty-points",
        "LOYALTY_KAFKA_SASL_PASSWORD": PASSWORD,
        "LOYALTY_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "loyalty_points", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "kafka_settings_invalid" in output
    assert "LOYALTY_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs LOYALTY_KAFKA_SASL_MECHANISM" in output
    assert PASSWORD not in output

    env["LOYALTY_KAFKA_SECURITY_PROTOCOL"] = "KERBEROS"
    done = subprocess.run(
        [sys.executable, "-m", "loyalty_points", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid setting LOYALTY_KAFKA_SECURITY_PROTOCOL" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_bootstrap_servers_are_read_as_kafka_spells_them():
    from loyalty_shared.kafka.connection import _servers

    assert _servers("kafka") == [("kafka", 9092)]
    assert _servers("a:9093, b:9094,") == [("a", 9093), ("b", 9094)]
    assert _servers("[::1]:9093") == [("::1", 9093)]


async def test_a_closed_port_is_a_problem_named_by_its_address():
    from loyalty_shared.kafka.broker import free_port
    from loyalty_shared.kafka.connection import connection_problem

    port = free_port()
    problem = await connection_problem(f"127.0.0.1:{port}", settings(), timeout=3)
    assert problem is not None and problem.startswith(f"127.0.0.1:{port}: ")
