"""What the manifests say about observing and fencing the platform: the alerts name metrics the
code exports and are documented, Prometheus scrapes the databases and Kafka's exporter, prod
backs every database up, and the NetworkPolicies let exactly the calls the settings configure
through (a service's *_URL naming another), nothing else."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from loyalty_shared import observability
from prometheus_client import Counter
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
OVERLAYS = ["dev", "prod"]
ALERTS = {
    "LoyaltyConsumerLagSustained",
    "LoyaltyOutboxBacklogSustained",
    "LoyaltyDeadLettersWaiting",
    "LoyaltyJobFailed",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    spec = importlib.util.spec_from_file_location("k8s_validate", ROOT / "deploy/k8s/validate.py")
    assert spec and spec.loader
    validate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validate)
    return {overlay: validate.render(overlay) for overlay in OVERLAYS}


def of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in of(objects, kind) if o["metadata"]["name"] == name]
    return found


def exported_metrics() -> set[str]:
    names = set()
    for value in vars(observability).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name  # type: ignore[attr-defined]
            names.add(f"{name}_total" if isinstance(value, Counter) else name)
    return names


def test_metric_names_follow_prometheus_conventions() -> None:
    for name in exported_metrics():
        assert name.startswith("loyalty_"), name
        assert re.fullmatch(r"[a-z_]+", name), name
    counters = [
        v for v in vars(observability).values() if isinstance(v, Counter)
    ]  # counters end in _total (prometheus_client adds it to the exposition)
    assert counters
    assert observability.REQUEST_LATENCY._name.endswith("_seconds")  # type: ignore[attr-defined]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_alerts_watch_metrics_the_services_export(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    [rule] = of(rendered[overlay], "PrometheusRule")
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    exported = exported_metrics()
    readme = (ROOT / "deploy/README.md").read_text()
    for r in rules:
        used = set(re.findall(r"\bloyalty_[a-z_]+\b", r["expr"]))
        assert used and used <= exported, (r["alert"], used - exported)
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(r["annotations"])
        assert f"`{r['alert']}`" in readme, f"{r['alert']} is not explained in deploy/README.md"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_the_databases_and_kafkas_exporter(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    databases = named(objects, "PodMonitor", "loyalty-databases")
    [expression] = databases["spec"]["selector"]["matchExpressions"]
    assert expression["key"] == "cnpg.io/cluster" and expression["operator"] == "In"
    assert set(expression["values"]) == {c["metadata"]["name"] for c in of(objects, "Cluster")}
    assert databases["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"

    [kafka] = of(objects, "Kafka")
    assert "kafkaExporter" in kafka["spec"]
    exporter = named(objects, "PodMonitor", "loyalty-kafka-exporter")
    assert exporter["spec"]["selector"]["matchLabels"] == {
        "strimzi.io/cluster": kafka["metadata"]["name"],
        "strimzi.io/name": f"{kafka['metadata']['name']}-kafka-exporter",
    }


def test_prod_backs_every_database_up(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["prod"]
    stores = {o["metadata"]["name"] for o in of(objects, "ObjectStore")}
    backups = {b["spec"]["cluster"]["name"]: b for b in of(objects, "ScheduledBackup")}
    for cluster in of(objects, "Cluster"):
        name = cluster["metadata"]["name"]
        [plugin] = cluster["spec"]["plugins"]
        assert plugin["isWALArchiver"] is True
        assert plugin["parameters"]["barmanObjectName"] in stores
        backup = backups[name]
        assert backup["spec"]["method"] == "plugin"
        assert backup["spec"]["pluginConfiguration"]["name"] == plugin["name"]
        assert len(backup["spec"]["schedule"].split()) == 6, "CloudNativePG's cron has seconds"
        for obj in (backup, *of(objects, "ObjectStore")):
            assert obj["metadata"]["labels"]["loyalty/phase"] == "infrastructure"


def _callers(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Who calls whom, from the settings: a `<caller>_<target>_URL=http://<target>:<port>` in
    the caller's ConfigMap."""
    calls: dict[str, set[str]] = {}
    for config in of(objects, "ConfigMap"):
        owner = re.sub(r"-config(-[a-z0-9]+)?$", "", config["metadata"]["name"])
        if owner == config["metadata"]["name"]:
            continue
        for key, value in (config.get("data") or {}).items():
            if key.endswith("_URL") and value.startswith("http"):
                calls.setdefault(urlsplit(value).hostname or "", set()).add(owner)
    return calls


def _admits(policy: dict[str, Any]) -> dict[str, set[str]]:
    """A NetworkPolicy's sources by port: a pod of this namespace by name, or a namespace."""
    admitted: dict[str, set[str]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            for source in rule["from"]:
                if "namespaceSelector" in source:
                    label = source["namespaceSelector"]["matchLabels"]
                    who = "namespace:" + label["kubernetes.io/metadata.name"]
                else:
                    labels = source["podSelector"]["matchLabels"]
                    who = labels.get("app.kubernetes.io/name") or "cluster:" + labels.get(
                        "cnpg.io/cluster", "?"
                    )
                admitted.setdefault(str(port["port"]), set()).add(who)
    return admitted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_what_must_talk_does(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    calls = _callers(objects)
    assert calls["points"] >= {"coupon", "console"} and calls["member"] >= {"notifier", "coupon"}
    policies = {p["metadata"]["name"]: p for p in of(objects, "NetworkPolicy")}
    outside = {"namespace:ingress-nginx", "namespace:monitoring"}
    for name in SERVICES:
        policy = policies[name]
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        # exactly the pods whose settings name this service, the ingress and Prometheus
        assert _admits(policy) == {"http": calls[name] | outside}, name

        database = policies[f"{name}-db"]
        assert database["spec"]["podSelector"]["matchLabels"] == {"cnpg.io/cluster": f"{name}-db"}
        assert _admits(database) == {
            "5432": {name, f"cluster:{name}-db"},
            "8000": {"namespace:cnpg-system"},
            "9187": {"namespace:monitoring"},
        }
    assert _admits(policies["console"]) == {"http": {"namespace:ingress-nginx"}}
    # every Deployment is fenced, and Kafka's listener admits the services only (Strimzi)
    fenced = {
        p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/name")
        for p in policies.values()
    }
    assert {d["metadata"]["name"] for d in of(objects, "Deployment")} <= fenced
    [kafka] = of(objects, "Kafka")
    for listener in kafka["spec"]["kafka"]["listeners"]:
        [peer] = listener["networkPolicyPeers"]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "service"
