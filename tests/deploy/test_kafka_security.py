"""Kafka as prod runs it: the TLS listener with SCRAM-SHA-512 and simple authorization, one
KafkaUser per service whose ACLs grant what its code publishes, consumes and dead-letters and
nothing else, and services configured to match (settings the services accept). Dev keeps the
plain listener and the default settings."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from loyalty_shared.kafka import connection_kwargs, dlq_topic
from loyalty_shared.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
SECURITY = (
    "LOYALTY_KAFKA_SECURITY_PROTOCOL",
    "LOYALTY_KAFKA_SASL_MECHANISM",
    "LOYALTY_KAFKA_SASL_USERNAME",
    "LOYALTY_KAFKA_SASL_PASSWORD",
    "LOYALTY_KAFKA_SSL_CA_FILE",
    "LOYALTY_KAFKA_SSL_CERT_FILE",
    "LOYALTY_KAFKA_SSL_KEY_FILE",
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    spec = importlib.util.spec_from_file_location("k8s_validate", ROOT / "deploy/k8s/validate.py")
    assert spec and spec.loader
    validate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validate)
    return {overlay: validate.render(overlay) for overlay in ("dev", "prod")}


def _of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _get(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in _of(objects, kind) if o["metadata"]["name"] == name]
    return found


def _platform(objects: list[dict[str, Any]]) -> dict[str, str]:
    [config] = [
        o for o in _of(objects, "ConfigMap") if o["metadata"]["name"].startswith("loyalty-platform")
    ]
    return config["data"]  # type: ignore[no-any-return]


def _main_container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    deployment = _get(objects, "Deployment", name)
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_prod_kafka_listens_only_with_tls_and_scram_and_enforces_acls(rendered) -> None:
    prod = rendered["prod"]
    [kafka] = _of(prod, "Kafka")
    spec = kafka["spec"]
    [listener] = spec["kafka"]["listeners"]
    assert listener["tls"] is True and listener["port"] == 9093
    assert listener["authentication"] == {"type": "scram-sha-512"}
    assert listener["networkPolicyPeers"], "only the services' pods reach it"
    assert spec["kafka"]["authorization"]["type"] == "simple"
    assert "userOperator" in spec["entityOperator"], "the User Operator manages the KafkaUsers"

    platform = _platform(prod)
    cluster = kafka["metadata"]["name"]
    assert platform["LOYALTY_KAFKA_BOOTSTRAP"] == f"{cluster}-kafka-bootstrap:9093"
    assert platform["LOYALTY_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert platform["LOYALTY_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


def test_dev_keeps_the_plain_listener_and_the_default_settings(rendered) -> None:
    dev = rendered["dev"]
    [kafka] = _of(dev, "Kafka")
    [listener] = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is False and listener["port"] == 9092
    assert not _of(dev, "KafkaUser")
    platform = _platform(dev)
    for name in SERVICES:
        env = {e["name"] for e in _main_container(dev, name).get("env", [])}
        assert not env & set(SECURITY), name
    assert not set(platform) & set(SECURITY)


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_connects_as_its_own_user_with_the_cluster_ca(
    rendered, name: str, tmp_path: Path
) -> None:
    prod = rendered["prod"]
    [kafka] = _of(prod, "Kafka")
    cluster = kafka["metadata"]["name"]
    user = _get(prod, "KafkaUser", f"loyalty-{name}")
    assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert user["metadata"]["labels"]["loyalty/phase"] == "infrastructure", "applied first"
    assert user["spec"]["authentication"] == {"type": "scram-sha-512"}

    container = _main_container(prod, name)
    env = {e["name"]: e for e in container["env"]}
    assert env["LOYALTY_KAFKA_SASL_USERNAME"]["value"] == user["metadata"]["name"]
    # the User Operator's Secret of the same name holds the password
    assert env["LOYALTY_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": user["metadata"]["name"],
        "key": "password",
    }

    # Strimzi's cluster CA, mounted where LOYALTY_KAFKA_SSL_CA_FILE points
    ca_file = Path(_platform(prod)["LOYALTY_KAFKA_SSL_CA_FILE"])
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == ca_file.parent]
    assert mount["readOnly"] is True
    pod = _get(prod, "Deployment", name)["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == f"{cluster}-cluster-ca-cert"
    assert {"key": "ca.crt", "path": ca_file.name} in volume["secret"]["items"]

    # and the service accepts the combination (the CA file stands in for the mounted one)
    (tmp_path / "ca.crt").write_text(_a_ca_certificate())
    values = {k: v for k, v in _platform(prod).items() if k.startswith("LOYALTY_KAFKA_")}
    values["LOYALTY_KAFKA_SSL_CA_FILE"] = str(tmp_path / "ca.crt")
    values["LOYALTY_KAFKA_SASL_USERNAME"] = env["LOYALTY_KAFKA_SASL_USERNAME"]["value"]
    values["LOYALTY_KAFKA_SASL_PASSWORD"] = "from-the-secret"
    settings = PlatformSettings(
        **{k.removeprefix("LOYALTY_").lower(): v for k, v in values.items()}
    )
    options = connection_kwargs(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"


def _a_ca_certificate() -> str:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cluster-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("name", SERVICES)
def test_each_users_acls_grant_what_its_code_needs_and_nothing_more(rendered, name: str) -> None:
    definition = importlib.import_module(f"loyalty_{name}.bootstrap").definition()
    group = f"loyalty-{name}"
    user = _get(rendered["prod"], "KafkaUser", f"loyalty-{name}")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in user["spec"]["authorization"]["acls"]:
        resource = rule["resource"]
        assert resource.get("patternType", "literal") == "literal", "no prefixes, no wildcards"
        assert rule.get("type", "allow") == "allow"
        assert resource["name"] != "*"
        key = (resource["type"], resource["name"])
        assert key not in granted, f"{key} twice"
        granted[key] = set(rule["operations"])

    writes = set(definition.publishes) | {dlq_topic(t, group) for t in definition.consumes}
    # a service creates a topic it does not find (ensure_topics): its own, so Create on those
    expected = {("topic", t): {"Write", "Create", "Describe"} for t in writes}
    expected |= {("topic", t): {"Read", "Describe"} for t in definition.consumes}
    expected[("group", group)] = {"Read"}
    assert granted == expected
