"""Settings every service reads: ports, data directory, Kafka, API keys, database URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_PORT_OFFSETS = {
    "member": 1,
    "points": 2,
    "coupon": 3,
    "notifier": 4,
    "segmenter": 5,
    "console": 6,
}

ALL_SCOPES = (
    "events:write",
    "members:read",
    "members:write",
    "points:write",
    "coupons:write",
    "notify:write",
    "admin",
)

DEV_API_KEYS = "dev-key=" + ",".join(ALL_SCOPES)

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class PlatformSettings(BaseSettings):
    """Platform-wide settings, read from `LOYALTY_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    data_dir: Path = Path(".run")
    port_base: int = 8000
    kafka_port: int = 9092
    kafka_bootstrap: str = ""
    # How every Kafka client connects (contract §3); `kafka/connection.py` turns these into the
    # clients' arguments and refuses, at start, a combination that cannot work.
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None  # never logged: repr shows '**********'
    kafka_ssl_ca_file: Path | None = None  # unset: the system's trusted CAs
    kafka_ssl_cert_file: Path | None = None  # a client certificate (mutual TLS), with its key
    kafka_ssl_key_file: Path | None = None
    # Idempotent producers (enable_idempotence, acks=all) as a real Kafka wants; the embedded
    # broker (tansu 0.6) has no InitProducerId, so its stack turns this off (kafka/broker.py).
    kafka_idempotent_producer: bool = True
    # How long a fetch may wait on the broker for records. Kafka answers a parked fetch as soon
    # as records arrive; the embedded broker only after the full wait, so its stack shortens it.
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=0)
    api_keys: str = ""
    # Requests per second and burst per API key and process (429 `rate_limited` beyond them);
    # generous enough for the benchmarks (1000 coupon requests/s from one key). 0: no limit.
    rate_limit_per_second: float = Field(default=2000.0, ge=0)
    rate_limit_burst: int = Field(default=4000, ge=0)
    # Unknown or missing API keys one client address may send per minute before its further
    # ones answer 429 (contract §3). 0: no throttle.
    auth_failures_per_minute: int = Field(default=20, ge=0)
    topic_partitions: int = 6
    topic_replication: int = 1  # a real cluster: 3 (the embedded broker has one node)
    outbox_retention_days: int = 7
    idempotency_retention_hours: int = Field(default=24, ge=1)
    outbox_batch_size: int = 500
    consumer_batch_size: int = 1000
    consumer_max_retries: int = 3
    scheduler_enabled: bool = True
    log_level: str = "INFO"
    # One JSON line per request (`http_request`: method, route template, status, duration, trace
    # id); uvicorn's own access log stays off, since it prints the raw path and query.
    access_log: bool = True
    host: str = "127.0.0.1"

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `LOYALTY_KAFKA_SSL_CA_FILE=` (an empty variable, as manifests often leave one) is unset
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        # `sasl_ssl`, `scram-sha-512` (Strimzi's spelling) are the same settings
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"


class ServiceSettings(PlatformSettings):
    """Settings of one service; `database_url` comes from `<SERVICE>_DATABASE_URL`."""

    service: str = Field(default="", exclude=True)
    database_url: str | None = None

    @classmethod
    def for_service(cls, service: str, **overrides: object) -> ServiceSettings:
        values: dict[str, object] = {"service": service}
        url = os.environ.get(f"{service.upper()}_DATABASE_URL")
        if url:
            values["database_url"] = url
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        return self.port_base + SERVICE_PORT_OFFSETS[self.service]
