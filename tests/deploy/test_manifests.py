"""The Kubernetes manifests and the Dockerfiles say what the code needs: every topic and dead-letter
topic, probes on the service's own port, a database and the connections for every replica, a
hardened pod, and the console (no database: no init container) with its shared session secret;
`make k8s-validate` checks the schemas, these tests check the meaning."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from loyalty_shared.clock import SystemClock
from loyalty_shared.db import create_engine
from loyalty_shared.events import TOPICS
from loyalty_shared.kafka import dlq_topic
from loyalty_shared.service import Runtime
from loyalty_shared.settings import SERVICE_PORT_OFFSETS, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["member", "points", "coupon", "notifier", "segmenter"]
CONSOLE = "console"  # pages over the five services' APIs: no database, no topics
OVERLAYS = ["dev", "prod"]
# Secrets the manifests reference but do not hold: CloudNativePG writes `<service>-db-app`, the
# platform team creates the API keys and the console's session secret (dev generates both), the
# notifier's providers are optional.
EXTERNAL_SECRETS = {f"{s}-db-app" for s in SERVICES} | {
    "loyalty-api-keys",
    "console-session",
    "notifier-providers",
}


def _load_validate() -> Any:
    spec = importlib.util.spec_from_file_location("k8s_validate", ROOT / "deploy/k8s/validate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    validate = _load_validate()
    return {overlay: validate.render(overlay) for overlay in OVERLAYS}


class Objects:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.all = objects

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.all if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
        return found[0]

    def config(self, prefix: str) -> dict[str, str]:
        """The data of the ConfigMap generated as `prefix` (its name carries a hash suffix)."""
        found = [
            o
            for o in self.of("ConfigMap")
            if re.fullmatch(rf"{prefix}(-[a-z0-9]+)?", o["metadata"]["name"])
        ]
        assert len(found) == 1, f"ConfigMap {prefix}: {len(found)}"
        return found[0]["data"]  # type: ignore[no-any-return]


def _definition(name: str) -> Any:
    return importlib.import_module(f"loyalty_{name}.bootstrap").definition()


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICES)
def test_deployment_runs_the_service_hardened_and_probed(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, name: str
) -> None:
    objects = Objects(rendered[overlay])
    deployment = objects.get("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False, "service links would inject LOYALTY_* variables"

    port = int(objects.config("loyalty-platform")["LOYALTY_PORT_BASE"]) + SERVICE_PORT_OFFSETS[name]
    main = _container(deployment)
    assert main["ports"] == [{"name": "http", "containerPort": port}]
    assert main["args"] == ["serve"]
    assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz?require=database", "port": "http"}
    [migrate] = pod["initContainers"]
    assert migrate["command"] == ["python", "-m", f"loyalty_{name}", "migrate"]
    assert migrate["image"] == main["image"]

    for container in (main, migrate):
        assert re.search(rf"(^|/)(loyalty-)?{name}:[^/]+$", container["image"]), container["image"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
        url = {e["name"]: e for e in container["env"]}[f"{name.upper()}_DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": f"{name}-db-app", "key": "uri"}

    keys = {e["name"]: e for e in main["env"]}["LOYALTY_API_KEYS"]
    assert keys["valueFrom"]["secretKeyRef"]["name"] == "loyalty-api-keys"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", SERVICES)
def test_service_budget_autoscaler_and_database_belong_to_the_deployment(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, name: str
) -> None:
    objects = Objects(rendered[overlay])
    deployment = objects.get("Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selects = deployment["spec"]["selector"]["matchLabels"]
    assert selects.items() <= labels.items()

    service = objects.get("Service", name)
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert port["port"] == _container(deployment)["ports"][0]["containerPort"]

    budget = objects.get("PodDisruptionBudget", name)
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1, "a single replica must not block a drain"

    autoscaler = objects.get("HorizontalPodAutoscaler", name)
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    low, high = autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]
    assert 1 <= low <= high
    if overlay == "prod":
        assert low >= 3, "prod survives the loss of a node during a rollout"
        assert "podAntiAffinity" in deployment["spec"]["template"]["spec"]["affinity"]

    # A consumer group shares partitions: replicas beyond them would idle as consumers.
    partitions = int(objects.config("loyalty-platform")["LOYALTY_TOPIC_PARTITIONS"])
    assert high <= partitions

    # Every replica (and one more during a rollout) may hold its whole pool at once.
    engine = create_engine("postgresql://user@localhost/db")
    per_replica = engine.sync_engine.pool.size() + engine.sync_engine.pool._max_overflow  # type: ignore[attr-defined]
    database = objects.get("Cluster", f"{name}-db")
    max_connections = int(database["spec"]["postgresql"]["parameters"]["max_connections"])
    assert max_connections >= per_replica * (high + 1) + 10
    initdb = database["spec"]["bootstrap"]["initdb"]
    assert initdb == {"database": name, "owner": name}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_topic_and_dead_letter_topic_the_code_uses_exists(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = Objects(rendered[overlay])
    platform = objects.config("loyalty-platform")
    partitions = int(platform["LOYALTY_TOPIC_PARTITIONS"])
    [kafka] = objects.of("Kafka")
    cluster = kafka["metadata"]["name"]
    host, _, port = platform["LOYALTY_KAFKA_BOOTSTRAP"].rpartition(":")
    assert host == f"{cluster}-kafka-bootstrap"
    # the services' listener (plain in dev, TLS in prod: tests/deploy/test_kafka_security.py)
    [_listener] = [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == int(port)]
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False

    brokers = sum(p["spec"]["replicas"] for p in objects.of("KafkaNodePool"))
    topics = {t["spec"]["topicName"]: t for t in objects.of("KafkaTopic")}
    for topic in topics.values():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert topic["metadata"]["name"] == topic["spec"]["topicName"]
        # A service creates a topic it does not find with LOYALTY_TOPIC_PARTITIONS partitions.
        assert topic["spec"]["partitions"] == partitions, topic["spec"]["topicName"]
        replicas = topic["spec"]["replicas"]
        assert replicas <= brokers
        assert topic["spec"]["config"]["min.insync.replicas"] == max(1, replicas - 1)

    needed = set(TOPICS)
    allowed = set(TOPICS)
    for name in SERVICES:
        definition = _definition(name)
        runtime = Runtime(definition, ServiceSettings.for_service(name), SystemClock())
        needed |= {dlq_topic(t, runtime.consumer_group) for t in definition.consumes}
        needed |= set(definition.publishes)
        allowed |= {dlq_topic(t, runtime.consumer_group) for t in TOPICS}
    assert needed - set(topics) == set(), "topics the code uses without a KafkaTopic"
    assert set(topics) - allowed == set(), "KafkaTopics that no service uses"

    retention = int(platform["LOYALTY_OUTBOX_RETENTION_DAYS"]) * 86_400_000
    for name in TOPICS:
        assert int(topics[name]["spec"]["config"]["retention.ms"]) >= retention


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves_and_every_object_is_in_the_namespace(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = Objects(rendered[overlay])
    present = {o["metadata"]["name"] for o in objects.all if o["kind"] in ("ConfigMap", "Secret")}
    # Strimzi's User Operator writes each KafkaUser's credentials into a Secret of its name
    present |= {o["metadata"]["name"] for o in objects.of("KafkaUser")}
    for deployment in objects.of("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in {
            o["metadata"]["name"] for o in objects.of("ServiceAccount")
        }
        # Only the five services migrate a database in an init container; the console has none.
        for container in pod["containers"] + pod.get("initContainers", []):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in present
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is None:
                    continue
                assert ref["name"] in present | EXTERNAL_SECRETS, ref
                if ref["name"] == "notifier-providers":
                    assert ref["optional"] is True
    for name in SERVICES:
        objects.get("Cluster", f"{name}-db")  # whose operator writes `<name>-db-app`
    for obj in objects.all:
        expected = None if obj["kind"] == "Namespace" else "loyalty"
        assert obj["metadata"].get("namespace") == expected, obj["metadata"]["name"]

    monitor = objects.get("ServiceMonitor", "loyalty-services")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    assert {
        s["metadata"]["name"]
        for s in objects.of("Service")
        if wanted <= s["metadata"]["labels"].items()
    } == set(SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_console_runs_hardened_without_a_database_and_shares_its_session_secret(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = Objects(rendered[overlay])
    deployment = objects.get("Deployment", CONSOLE)
    pod = deployment["spec"]["template"]["spec"]
    # No autoscaler: a fixed number of replicas, more than one (sessions are sealed cookies
    # every replica opens, so no sticky sessions and no single pod to lose).
    autoscalers = objects.of("HorizontalPodAutoscaler")
    assert CONSOLE not in {a["spec"]["scaleTargetRef"]["name"] for a in autoscalers}
    assert deployment["spec"]["replicas"] >= (3 if overlay == "prod" else 2)
    if overlay == "prod":
        assert "podAntiAffinity" in pod["affinity"]
    assert "initContainers" not in pod, "the console has no database to migrate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False

    base = int(objects.config("loyalty-platform")["LOYALTY_PORT_BASE"])
    port = base + SERVICE_PORT_OFFSETS[CONSOLE]
    [main] = pod["containers"]
    assert main["ports"] == [{"name": "http", "containerPort": port}]
    assert main["args"] == ["serve"]
    assert re.search(r"(^|/)(loyalty-)?console:[^/]+$", main["image"]), main["image"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    security = main["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"/tmp"} <= {m["mountPath"] for m in main["volumeMounts"]}
    resources = main["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]

    env = {e["name"]: e for e in main["env"]}
    # One secret for every replica, and no pod without it (not optional).
    secret = env["CONSOLE_SESSION_SECRET"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "console-session", "key": "CONSOLE_SESSION_SECRET"}
    # Behind the TLS ingress (deploy/README.md): its forwarded headers believed, cookies Secure.
    assert env["FORWARDED_ALLOW_IPS"]["value"] == "*"
    assert env["CONSOLE_COOKIE_SECURE"]["value"] == "true"
    # The console signs in with each operator's key: it holds none of its own, nor a database.
    assert not {"LOYALTY_API_KEYS", "CONSOLE_DATABASE_URL"} & set(env)

    # The five services' URLs point at their Services and ports.
    sources = [s["configMapRef"]["name"] for s in main["envFrom"]]
    assert sources[0].startswith("loyalty-platform")
    config = objects.config("console-config")
    assert any(name.startswith("console-config") for name in sources)
    for name in SERVICES:
        service = objects.get("Service", name)
        [service_port] = service["spec"]["ports"]
        assert config[f"CONSOLE_{name.upper()}_URL"] == f"http://{name}:{service_port['port']}"

    generated = [s for s in objects.of("Secret") if s["metadata"]["name"] == "console-session"]
    if overlay == "dev":
        assert [set(s["data"]) for s in generated] == [{"CONSOLE_SESSION_SECRET"}]
    else:  # the platform team creates it (deploy/README.md)
        assert generated == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_consoles_service_and_budget_belong_to_its_deployment(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = Objects(rendered[overlay])
    deployment = objects.get("Deployment", CONSOLE)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Not a `service`: the ServiceMonitor (no /metrics) and the services' patches leave it out.
    assert labels["app.kubernetes.io/component"] == "console"
    service = objects.get("Service", CONSOLE)
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "reached through the ingress"
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert port["port"] == _container(deployment)["ports"][0]["containerPort"]
    budget = objects.get("PodDisruptionBudget", CONSOLE)
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


def test_images_are_pinned_in_prod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in Objects(rendered["prod"]).of("Deployment"):
        image = _container(deployment)["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
    for deployment in Objects(rendered["dev"]).of("Deployment"):
        assert _container(deployment)["image"] == f"loyalty-{deployment['metadata']['name']}:dev"


# ---------------------------------------------------------------------------------------------
# The Dockerfiles and the build context
# ---------------------------------------------------------------------------------------------


def _dockerfile(name: str) -> str:
    return (ROOT / "services" / name / "Dockerfile").read_text()


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfiles_differ_only_in_the_service(name: str) -> None:
    text = _dockerfile(name)
    port = 8000 + SERVICE_PORT_OFFSETS[name]
    assert text == _dockerfile("points").replace("points", name).replace(
        "EXPOSE 8002", f"EXPOSE {port}"
    )
    assert f"ARG SERVICE={name}\n" in text
    assert f'ENTRYPOINT ["python", "-m", "loyalty_{name}"]' in text
    assert 'uv sync --frozen --no-dev --package "loyalty-${SERVICE}"' in text
    assert "\nUSER 10001:10001\n" in text
    assert "HEALTHCHECK" not in text.replace("# No HEALTHCHECK", "")


def _instructions(text: str) -> list[str]:
    """A Dockerfile's instructions, each with its continuation lines, without the comments."""
    found: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        found.append(pending)
        pending = ""
    return found


def test_the_consoles_dockerfile_is_the_services_without_migrations() -> None:
    text = _dockerfile(CONSOLE)
    port = 8000 + SERVICE_PORT_OFFSETS[CONSOLE]
    # The same base, uv, lock and user as the services'; nothing to migrate; EXPOSE its port.
    services = [
        line.replace("points", CONSOLE).replace("EXPOSE 8002", f"EXPOSE {port}")
        for line in _instructions(_dockerfile("points"))
        if "migrations" not in line
    ]
    console = [line for line in _instructions(text) if not line.startswith("HEALTHCHECK")]
    assert console == services
    assert not [line for line in _instructions(text) if "migrat" in line]
    # A HEALTHCHECK for `docker run` (Kubernetes probes /healthz itself), on base + 6.
    [healthcheck] = [line for line in _instructions(text) if line.startswith("HEALTHCHECK")]
    assert "/healthz" in healthcheck and "LOYALTY_PORT_BASE" in healthcheck and "+ 6" in healthcheck
    assert "\nUSER 10001:10001\n" in text


def _docker_ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, pattern in patterns:
        if any(pattern.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!")
        regex = "".join(
            ".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            for part in re.split(r"(\*\*)", glob)
        )
        patterns.append((negated, re.compile(regex.replace(".*/", "(.*/)?"))))
    return patterns


def test_build_context_holds_what_the_dockerfiles_copy_and_nothing_else() -> None:
    patterns = _dockerignore()
    for name in [*SERVICES, CONSOLE]:
        sources = re.findall(r"^COPY (?!--from)(\S+)", _dockerfile(name), flags=re.M)
        sources += re.findall(r"source=([^,\s]+)", _dockerfile(name))
        for source in sources:
            path = ROOT / source.replace("${SERVICE}", name)
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
            assert files, source
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative:
                    assert _docker_ignored(relative, patterns)
                else:
                    assert not _docker_ignored(relative, patterns), relative
    for kept_out in [
        ".git/HEAD",
        ".venv/pyvenv.cfg",
        "services/points/tests/unit/x.py",
        "deploy/README.md",
        "shared/tests/x.py",
    ]:
        assert _docker_ignored(kept_out, patterns), kept_out
