"""The Kafka runtime: outbox relay, idempotent batch consumer, DLQ, topics, embedded broker."""

from .connection import KafkaSettingsError, connection_kwargs, producer_kwargs
from .consumer import Handlers, IdempotentConsumer, apply_events
from .outbox import OutboxRelay, add_to_outbox, make_producer, schedule_replay
from .topics import dlq_topic, ensure_topics

__all__ = [
    "Handlers",
    "IdempotentConsumer",
    "KafkaSettingsError",
    "OutboxRelay",
    "add_to_outbox",
    "apply_events",
    "connection_kwargs",
    "dlq_topic",
    "ensure_topics",
    "make_producer",
    "producer_kwargs",
    "schedule_replay",
]
