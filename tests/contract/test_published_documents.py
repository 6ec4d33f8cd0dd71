"""The AsyncAPI document and the services' OpenAPI documents match the code (`make docs`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "platform_docs", ROOT / "tools" / "platform_docs.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_documents_match_the_code():
    assert load_tool().differences() == [], "run `make docs` and commit docs/"


def test_asyncapi_names_a_producer_for_every_topic_and_a_consumer_for_consumed_types():
    document = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert document["asyncapi"] == "3.0.0"
    senders = {
        op["channel"]["$ref"].rsplit("/", 1)[1]
        for op in document["operations"].values()
        if op["action"] == "send"
    }
    assert senders == set(document["channels"])
    received = {
        ref["$ref"].rsplit("/", 1)[1]
        for op in document["operations"].values()
        if op["action"] == "receive"
        for ref in op["messages"]
    }
    # The signup bonus path at least: points receives member.registered.
    assert "member.registered" in received
    assert document["operations"]["points.receive.loyalty.members"]["action"] == "receive"
