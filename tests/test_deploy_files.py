"""The deploy files hold together: Docker and Kubernetes cannot run here, so every manifest is
parsed and checked against the code it deploys (routes, ports, MANTIS_* variables, users).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from runner_bridge.worker_metrics import REGISTRY as WORKER_REGISTRY
from service.app import create_app
from service.auth import TokenTable
from service.metrics import REGISTRY
from service.openapi import router_operations
from service.settings import Settings

from .conftest import ROOT, TOKEN_SPEC

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
POD_NAMES = ("pod1", "pod2", "pod3")
DEFAULT_DRAIN_S = 5
# Time for a draining pod to end its streams at an event boundary and exit, after the drain.
STREAM_END_S = 5

# Named by the contract and read by code that lands with other branches (drain, the work
# queue's worker, stream limits, webhooks). Keep this list short: a name here is a promise.
PENDING_VARIABLES = {
    "MANTIS_WEBHOOK_RETRY_S",
    "MANTIS_WEBHOOK_ALLOW_PRIVATE",
    "MANTIS_WEBHOOK_ALLOW_HTTP",
}


def load_all(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no document"
    return docs


def manifests() -> list[dict[str, Any]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += load_all(path)
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def deployment(name: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == name]
    return found


def the_app() -> Any:
    return create_app(Settings(tenant_tokens=TOKEN_SPEC), TokenTable.parse(TOKEN_SPEC),
                      "redis://127.0.0.1:1")


SERVED = {path for method, path in router_operations(the_app()) if method == "GET"}


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for package in ("service", "runlog", "runner_bridge"):
        for source in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"MANTIS_[A-Z0-9_]+", source.read_text()))
    return names


KNOWN_VARIABLES = variables_read_by_the_code() | PENDING_VARIABLES


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def compose() -> dict[str, Any]:
    (doc,) = load_all(DEPLOY / "compose.yaml")
    return doc


# -- every file parses -----------------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind() -> None:
    files = [*K8S.glob("*.yaml"), DEPLOY / "compose.yaml", DEPLOY / "prometheus.yml"]
    assert len(files) >= 9
    for doc in manifests():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
    kinds = {doc["kind"] for doc in manifests()}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "Secret", "NetworkPolicy"} <= kinds


# -- Kubernetes --------------------------------------------------------------------------


def _probe_paths() -> list[str]:
    (container,) = deployment("mantis-service")["spec"]["template"]["spec"]["containers"]
    return [container[p]["httpGet"]["path"]
            for p in ("livenessProbe", "readinessProbe", "startupProbe") if p in container]


def test_probes_ask_liveness_of_healthz_and_readiness_of_readyz() -> None:
    (container,) = deployment("mantis-service")["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports


def test_probes_point_at_routes_the_app_serves() -> None:
    for path in _probe_paths():
        assert path in SERVED, f"probe path {path} is no route of the app"


def test_ports_and_variables_match_the_settings() -> None:
    for name in ("mantis-service", "mantis-worker"):
        spec = deployment(name)["spec"]["template"]["spec"]
        for container in spec["containers"]:
            env = container_env(container)
            unknown = set(env) - KNOWN_VARIABLES
            assert not unknown, f"{name}: variables no code reads: {unknown}"
    (api,) = deployment("mantis-service")["spec"]["template"]["spec"]["containers"]
    env = container_env(api)
    assert env["MANTIS_HOST"] == "0.0.0.0"
    settings = Settings.from_env({"MANTIS_PORT": env["MANTIS_PORT"]})
    assert [p["containerPort"] for p in api["ports"] if p["name"] == "http"] == [settings.port]
    # Fail closed: off loopback the service needs these three, so the pod must have them.
    assert {"MANTIS_REDIS_URL", "MANTIS_TENANT_TOKENS", "MANTIS_TICKET_SECRET"} <= env.keys()


def test_secret_refs_name_keys_the_secret_has() -> None:
    secrets = {doc["metadata"]["name"]: doc for doc in by_kind("Secret")}
    for name in ("mantis-service", "mantis-worker"):
        for container in deployment(name)["spec"]["template"]["spec"]["containers"]:
            for item in container["env"]:
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], ref


def test_grace_period_outlasts_the_drain_and_the_streams_ending() -> None:
    spec = deployment("mantis-service")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    drain = float(container_env(container).get("MANTIS_DRAIN_S") or DEFAULT_DRAIN_S)
    assert spec["terminationGracePeriodSeconds"] > drain + STREAM_END_S


def test_pods_run_as_non_root_with_a_read_only_root() -> None:
    for name in ("mantis-service", "mantis-worker"):
        spec = deployment(name)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_selectors_reach_the_pods_they_mean() -> None:
    api = deployment("mantis-service")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = by_kind("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policies = {doc["metadata"]["name"]: doc for doc in by_kind("NetworkPolicy")}
    assert policies["mantis-service"]["spec"]["podSelector"]["matchLabels"].items() <= (
        labels.items()
    )
    worker_labels = deployment("mantis-worker")["spec"]["template"]["metadata"]["labels"]
    assert policies["mantis-worker"]["spec"]["podSelector"]["matchLabels"].items() <= (
        worker_labels.items()
    )


def test_the_autoscaler_scales_the_api_on_open_streams() -> None:
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mantis-service"
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                   if m["type"] == "Pods"]
    assert pod_metrics == ["mantis_streams_open"]
    assert "mantis_streams_open" in {m.name for m in REGISTRY.collect()}


def test_the_worker_runs_the_work_command() -> None:
    (container,) = deployment("mantis-worker")["spec"]["template"]["spec"]["containers"]
    assert container["command"][-3:] == ["-m", "runner_bridge", "work"]


# -- Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def test_the_image_is_multi_stage_locked_and_non_root() -> None:
    steps = dockerfile()
    stages = [rest for instruction, rest in steps if instruction == "FROM"]
    assert len(stages) >= 2
    runs = " ".join(rest for instruction, rest in steps if instruction == "RUN")
    assert "--require-hashes" in runs and "requirements/service.lock" in " ".join(
        rest for instruction, rest in steps if instruction == "COPY"
    )
    final = steps[max(i for i, (ins, _) in enumerate(steps) if ins == "FROM"):]
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    exposed = [rest for instruction, rest in final if instruction == "EXPOSE"]
    assert exposed == [str(Settings.from_env({"MANTIS_PORT": "8080"}).port)]
    (cmd,) = [rest for instruction, rest in final if instruction == "CMD"]
    assert yaml.safe_load(cmd) == ["python", "-m", "service", "--loop", "uvloop"]
    for package in ("runlog", "service", "runner_bridge"):
        assert any(rest.startswith(f"{package} ") for ins, rest in steps if ins == "COPY")


# -- compose, haproxy, Prometheus ---------------------------------------------------------


def test_compose_topology_is_three_pods_redis_worker_haproxy_prometheus() -> None:
    services = compose()["services"]
    assert set(services) == {*POD_NAMES, "redis", "worker", "haproxy", "prometheus"}
    for name in POD_NAMES:
        pod = services[name]
        env = pod["environment"]
        assert env["MANTIS_POD_NAME"] == name
        assert set(env) <= KNOWN_VARIABLES, set(env) - KNOWN_VARIABLES
        assert {"MANTIS_REDIS_URL", "MANTIS_TENANT_TOKENS", "MANTIS_TICKET_SECRET"} <= env.keys()
        assert env["MANTIS_PORT"] == "8080"
        assert pod["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(pod["healthcheck"]["test"])
        drain = float(env.get("MANTIS_DRAIN_S", DEFAULT_DRAIN_S))
        assert float(pod["stop_grace_period"].rstrip("s")) > drain + STREAM_END_S
    worker = services["worker"]
    assert worker["command"] == ["python", "-m", "runner_bridge", "work"]
    assert set(worker["environment"]) <= KNOWN_VARIABLES


def test_redis_keeps_an_append_only_file_and_reads_the_acl_file() -> None:
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--aclfile /etc/redis/users.acl" in command
    assert "./users.acl:/etc/redis/users.acl:ro" in redis["volumes"]


def test_redis_users_of_the_urls_are_in_the_acl_file() -> None:
    services = compose()["services"]
    users = set()
    for name in (*POD_NAMES, "worker"):
        found = re.match(r"rediss?://([^:@]+):", services[name]["environment"]["MANTIS_REDIS_URL"])
        assert found is not None, name
        users.add(found[1])
    assert users == {"service", "runner"}
    acl = DEPLOY / "users.acl"
    defined = set(re.findall(r"^user\s+(\S+)", acl.read_text(), re.M))
    assert users <= defined


def test_haproxy_balances_the_three_pods_on_readiness() -> None:
    text = (DEPLOY / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+)", text, re.M)
    assert servers == [(name, f"{name}:8080") for name in POD_NAMES]
    assert re.search(r"option httpchk GET /readyz", text)
    haproxy = compose()["services"]["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    bind = re.search(r"^\s*bind\s+:(\d+)", text, re.M)
    assert bind is not None and f"{bind[1]}:{bind[1]}" in haproxy["ports"]


def test_prometheus_scrapes_every_pod_and_the_worker() -> None:
    (config,) = load_all(DEPLOY / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["mantis-service"]["static_configs"][0]["targets"]
    assert targets == [f"{name}:8080" for name in POD_NAMES]
    assert jobs["mantis-service"]["metrics_path"] in SERVED
    worker_port = compose()["services"]["worker"]["environment"]["MANTIS_METRICS_PORT"]
    assert jobs["mantis-worker"]["static_configs"][0]["targets"] == [f"worker:{worker_port}"]
    prometheus = compose()["services"]["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]


def test_every_file_the_compose_file_mounts_is_in_the_repository() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./") and source != "./users.acl":
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_the_readme_explains_every_deploy_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in [*DEPLOY.iterdir(), *K8S.iterdir()]:
        if path.is_file() and path.name != "README.md":
            assert path.name in readme, f"deploy/README.md does not explain {path.name}"


def test_the_grafana_dashboard_uses_only_metrics_the_service_exposes() -> None:
    import json

    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    families = {m.name for registry in (REGISTRY, WORKER_REGISTRY) for m in registry.collect()}
    exposed = set()
    for family in [*REGISTRY.collect(), *WORKER_REGISTRY.collect()]:
        for sample in family.samples:
            exposed.add(sample.name)
    used = set()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\b(mantis_[a-z_]+)", target["expr"]))
    assert used, "the dashboard queries nothing"
    unknown = {
        name for name in used
        if name not in exposed and name not in families
        and not any(name == f"{f}{suffix}" for f in families
                    for suffix in ("_bucket", "_count", "_sum", "_total"))
    }
    assert not unknown, f"dashboard queries metrics the service does not expose: {unknown}"


def test_shell_commands_in_compose_are_well_formed() -> None:
    for service in compose()["services"].values():
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD-SHELL":
            shlex.split(test[1])
