"""How every Kafka client of the platform connects: TLS and SASL from the settings (contract §3).

`connection_kwargs(settings)` is the one place that turns the `LOYALTY_KAFKA_*` security
settings into aiokafka's arguments (`security_protocol`, `ssl_context`, `sasl_mechanism`,
`sasl_plain_username`, `sasl_plain_password`); the outbox relay's and the dead-letter producers,
the consumers, the outbox's probe and the admin client that creates topics all take theirs from
it. It refuses a combination that cannot work with a `KafkaSettingsError` naming the setting, and
the service calls it once at start, so such a mistake stops the service before it serves.

Each client builds its arguments (and so its SSL context) when it is created: a client created
again after a failure reads the CA and certificate files again, so a renewed CA (Strimzi renews
its cluster CA; Kubernetes updates a mounted Secret in place) is picked up without a restart.

A broker that is reachable but refuses us (a CA that did not sign its certificate, a wrong
password) does not stop the service: its clients retry with backoff, each failure is logged at
level error with `broker_problem` naming the broker and the reason (`log_broker_failure`), and
/readyz answers 503 with it (`connection_problem`). Waiting cures what changes outside the
process (a fixed Secret, a renewed CA, a broker's new certificate); settings that cannot work
never get that far.

The SASL password is passed to aiokafka and nowhere else: it is a `SecretStr` in the settings,
these arguments are never logged, and `describe()` (what the logs say) leaves it out.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from ..settings import PlatformSettings

# Every Kafka message the platform produces carries this header (contract §2).
CONTENT_TYPE = ("content-type", b"application/cloudevents+json")

TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")

_PROTOCOL = "LOYALTY_KAFKA_SECURITY_PROTOCOL"
_MECHANISM = "LOYALTY_KAFKA_SASL_MECHANISM"
_USERNAME = "LOYALTY_KAFKA_SASL_USERNAME"
_PASSWORD = "LOYALTY_KAFKA_SASL_PASSWORD"
_CA_FILE = "LOYALTY_KAFKA_SSL_CA_FILE"
_CERT_FILE = "LOYALTY_KAFKA_SSL_CERT_FILE"
_KEY_FILE = "LOYALTY_KAFKA_SSL_KEY_FILE"


class KafkaSettingsError(ValueError):
    """The Kafka security settings cannot work together; the message names the setting."""


def connection_kwargs(settings: PlatformSettings) -> dict[str, Any]:
    """The aiokafka arguments that connect a client (producer, consumer or admin) as the
    settings say. Raises KafkaSettingsError on a combination that cannot work."""
    protocol = settings.kafka_security_protocol
    tls = protocol in TLS_PROTOCOLS
    sasl = protocol in SASL_PROTOCOLS
    files = {
        _CA_FILE: settings.kafka_ssl_ca_file,
        _CERT_FILE: settings.kafka_ssl_cert_file,
        _KEY_FILE: settings.kafka_ssl_key_file,
    }
    if not tls:
        named = [name for name, path in files.items() if path is not None]
        if named:
            raise KafkaSettingsError(
                f"{', '.join(named)} set, but {_PROTOCOL}={protocol} does not use TLS: "
                f"set {_PROTOCOL} to SSL or SASL_SSL, or unset {named[0]}"
            )
    if not sasl:
        named = [
            name
            for name, value in (
                (_MECHANISM, settings.kafka_sasl_mechanism),
                (_USERNAME, settings.kafka_sasl_username),
                (_PASSWORD, settings.kafka_sasl_password),
            )
            if value is not None
        ]
        if named:
            raise KafkaSettingsError(
                f"{', '.join(named)} set, but {_PROTOCOL}={protocol} does not use SASL: "
                f"set {_PROTOCOL} to SASL_SSL or SASL_PLAINTEXT, or unset {named[0]}"
            )
    options: dict[str, Any] = {"security_protocol": protocol}
    if tls:
        options["ssl_context"] = _ssl_context(settings)
    if sasl:
        if settings.kafka_sasl_mechanism is None:
            raise KafkaSettingsError(
                f"{_PROTOCOL}={protocol} needs {_MECHANISM} (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if not settings.kafka_sasl_username:
            raise KafkaSettingsError(f"{_PROTOCOL}={protocol} needs {_USERNAME}")
        password = settings.kafka_sasl_password
        if password is None or not password.get_secret_value():
            raise KafkaSettingsError(f"{_PROTOCOL}={protocol} needs {_PASSWORD}")
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = password.get_secret_value()
    return options


def _readable(name: str, path: Path) -> str:
    if not path.is_file():
        raise KafkaSettingsError(f"{name}={path}: no such file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise KafkaSettingsError(f"{name}={path}: cannot be read ({exc.strerror})") from exc
    return str(path)


def _ssl_context(settings: PlatformSettings) -> ssl.SSLContext:
    cert, key = settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file
    if (cert is None) != (key is None):
        given, missing = (_CERT_FILE, _KEY_FILE) if cert is not None else (_KEY_FILE, _CERT_FILE)
        raise KafkaSettingsError(
            f"{given} is set without {missing}: a client certificate needs both"
        )
    cafile = _readable(_CA_FILE, settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None
    certfile = _readable(_CERT_FILE, cert) if cert is not None else None
    keyfile = _readable(_KEY_FILE, key) if key is not None else None
    try:
        context = create_ssl_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise KafkaSettingsError(f"{_CA_FILE}={cafile}: not a PEM CA certificate ({exc})") from exc
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as exc:
            raise KafkaSettingsError(
                f"{_CERT_FILE}={certfile} and {_KEY_FILE}={keyfile}: not a PEM certificate and "
                f"its private key ({exc})"
            ) from exc
    return context


def producer_kwargs(settings: PlatformSettings) -> dict[str, Any]:
    """A producer's connection, and its delivery guarantee: idempotent with acks=all where the
    broker supports it (`LOYALTY_KAFKA_IDEMPOTENT_PRODUCER`)."""
    return {
        **connection_kwargs(settings),
        "enable_idempotence": settings.kafka_idempotent_producer,
        "acks": "all",
    }


def describe(settings: PlatformSettings) -> dict[str, Any]:
    """What the logs may say about how Kafka is reached (never the password)."""
    facts: dict[str, Any] = {
        "bootstrap": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in SASL_PROTOCOLS:
        facts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        facts["sasl_username"] = settings.kafka_sasl_username
    if settings.kafka_security_protocol in TLS_PROTOCOLS:
        facts["ssl_ca_file"] = str(settings.kafka_ssl_ca_file or "system CAs")
    return facts


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """`host:port,host2:port` (a port left out is Kafka's 9092; `[::1]:9093` for IPv6)."""
    servers = []
    for entry in (e.strip() for e in bootstrap.split(",")):
        if not entry:
            continue
        host, colon, port = entry.rpartition(":")
        if not colon or host.endswith(":") or not port.isdigit():  # no port, or a bare IPv6
            host, port = entry, "9092"
        servers.append((host.strip("[]") or "127.0.0.1", int(port)))
    return servers


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


async def connection_problem(
    bootstrap: str, settings: PlatformSettings, *, timeout: float = 5.0
) -> str | None:
    """Why no bootstrap server accepts a connection made as the settings say (TCP, TLS with the
    configured trust, SASL), as `<host>:<port>: <reason>` of the first that refused — for
    instance `127.0.0.1:9093: certificate verify failed: self-signed certificate in certificate
    chain` — or None once one accepts, all within `timeout` seconds. This is aiokafka's own
    connection, whose cause its clients only log under their logger and replace by "Unable to
    bootstrap"."""
    from aiokafka.conn import create_conn

    try:
        options = connection_kwargs(settings)
    except KafkaSettingsError as exc:
        return str(exc)
    first: str | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout  # for all the servers together: a probe must answer in time
    for host, port in _servers(bootstrap):
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            async with asyncio.timeout(left):
                conn = await create_conn(host, port, request_timeout_ms=int(left * 1000), **options)
        except Exception as exc:
            first = first or f"{host}:{port}: {_reason(exc)}"
            continue
        conn.close()
        return None
    return first or f"{bootstrap}: no answer in {timeout:g}s"


async def log_broker_failure(
    logger: Any,
    event: str,
    exc: BaseException,
    bootstrap: str,
    settings: PlatformSettings,
    **fields: Any,
) -> None:
    """Log a client's failure to reach the broker. aiokafka reports a refused TLS handshake or
    SASL login only as "Unable to bootstrap"; then one connection of our own says why (naming
    the broker), and the line is an error: the broker is there but refuses us, which waiting
    does not cure (a wrong CA, an expired certificate, a wrong password)."""
    from aiokafka.errors import KafkaConnectionError

    problem = None
    if isinstance(exc, KafkaConnectionError) and settings.kafka_security_protocol != "PLAINTEXT":
        problem = await connection_problem(bootstrap, settings)
    if problem is None:
        logger.warning(event, error=repr(exc), **fields)
        return
    facts = {**describe(settings), "bootstrap": bootstrap}
    logger.error(event, error=repr(exc), broker_problem=problem, **facts, **fields)
