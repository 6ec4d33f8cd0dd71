"""Topic creation at start, and the naming of dead-letter topics."""

from __future__ import annotations

import asyncio

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from ..settings import PlatformSettings
from .connection import connection_kwargs, log_broker_failure

log = structlog.get_logger(__name__)


def dlq_topic(topic: str, group: str) -> str:
    return f"{topic}.dlq.{group}"


async def ensure_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    replication: int = 1,
    *,
    attempts: int = 60,
    settings: PlatformSettings | None = None,
) -> set[str]:
    """Create the topics that do not exist yet; answer the ones this call created.

    Retries while the broker is not reachable, so that services may start before it. Connects as
    the settings say (TLS, SASL: `connection.py`; without settings, those of the environment).
    """
    settings = settings or PlatformSettings()
    delay = 0.2
    for attempt in range(attempts):
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=10000, **connection_kwargs(settings)
        )
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in dict.fromkeys(topics) if t not in existing]
            created: set[str] = set()
            for topic in missing:
                try:
                    await admin.create_topics(
                        [
                            NewTopic(
                                name=topic,
                                num_partitions=partitions,
                                replication_factor=replication,
                            )
                        ]
                    )
                    created.add(topic)
                except TopicAlreadyExistsError:
                    pass
            return created
        except (KafkaError, OSError) as exc:
            if attempt == attempts - 1:
                raise
            await log_broker_failure(
                log, "broker_unreachable", exc, bootstrap, settings, retry_in=delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            await admin.close()
    return set()
