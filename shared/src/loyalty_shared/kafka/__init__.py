"""The Kafka runtime: outbox relay, idempotent batch consumer, DLQ, topics, embedded broker."""

from .consumer import Handlers, IdempotentConsumer, apply_events
from .outbox import OutboxRelay, add_to_outbox, make_producer, schedule_replay
from .topics import dlq_topic, ensure_topics

__all__ = [
    "Handlers",
    "IdempotentConsumer",
    "OutboxRelay",
    "add_to_outbox",
    "apply_events",
    "dlq_topic",
    "ensure_topics",
    "make_producer",
    "schedule_replay",
]
