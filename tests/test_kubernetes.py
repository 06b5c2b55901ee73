"""The Kubernetes manifests in deploy/kubernetes hold together: each resource is valid against the
Kubernetes schemas (offline, kubernetes-validate), KEDA's ScaledObject against a schema of its
own, and every command, port, setting, key and metric they name exists in the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from feedpipe.cli import main
from feedpipe.config import DEFAULT_METRICS_PORTS, Settings
from feedpipe.core.catalog import QUEUES
from feedpipe.core.keys import DEFAULT_PREFIX, OwnKeys
from tests.test_monitoring_config import SCRAPE_LABELS, _exported

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests promise to run on (policy/v1 PDBs, startup probes, seccomp).
KUBERNETES_VERSION = "1.29"
# KEDA's CRDs are not in the Kubernetes schemas: the fields feedpipe uses, checked here.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                  "apiVersion": {"type": "string"}}},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {"type": "object"},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "properties": {"type": {"enum": ["redis", "prometheus"]},
                                   "metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
                    "allOf": [
                        {"if": {"properties": {"type": {"const": "redis"}}},
                         "then": {"properties": {"metadata": {"required": ["address", "listName", "listLength"]}}}},
                        {"if": {"properties": {"type": {"const": "prometheus"}}},
                         "then": {"properties": {"metadata": {"required": ["serverAddress", "query", "threshold"]}}}},
                    ],
                }},
            },
        },
    },
}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _documents() if doc["kind"] == kind]


def _deployments() -> dict[str, dict[str, Any]]:
    """Each Deployment by the feedpipe command its container runs."""
    found = {}
    for doc in _kind("Deployment"):
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        found[container["args"][0]] = doc
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


# Not Kubernetes resources: kustomize's own file, and KEDA's CRD (its own schema, below).
NOT_IN_THE_SCHEMAS = {"Kustomization", "ScaledObject"}


@pytest.mark.parametrize(
    "doc", [doc for _, doc in _documents() if doc["kind"] not in NOT_IN_THE_SCHEMAS],
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_each_resource_is_valid_against_the_kubernetes_schemas(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_scaled_object_is_valid_against_its_schema():
    (scaled,) = _kind("ScaledObject")
    jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


def test_kustomize_applies_every_file():
    (kustomization,) = [doc for _, doc in _documents() if doc["kind"] == "Kustomization"]
    assert set(kustomization["resources"]) == {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_long_running_command_has_a_deployment_on_its_own_port_with_probes():
    deployments = _deployments()
    assert set(deployments) == set(DEFAULT_METRICS_PORTS)
    for command, deployment in deployments.items():
        container = _container(deployment)
        assert command in main.commands, f"feedpipe has no command {command!r}"
        (port,) = container["ports"]
        assert port["containerPort"] == DEFAULT_METRICS_PORTS[command], command
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port["containerPort"]), command
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}, (command, probe)
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), command


def test_every_pod_runs_as_the_images_user_with_nothing_writable_but_tmp():
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())[1])  # type: ignore[index]
    for command, deployment in _deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid, command
        context = _container(deployment)["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"], command
        assert context["capabilities"]["drop"] == ["ALL"], command
        assert {"name": "tmp", "mountPath": "/tmp"} in _container(deployment)["volumeMounts"], command
        resources = _container(deployment)["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]


def test_configuration_comes_from_settings_that_exist_and_passwords_from_the_secret():
    (config,) = _kind("ConfigMap")
    (secret,) = _kind("Secret")
    names = set(config["data"]) | set(secret["stringData"])
    settings = {f"FEEDPIPE_{field.upper()}" for field in Settings.model_fields}
    for name in names:
        if name.startswith("FEEDPIPE_"):
            assert name in settings, f"{name} is no feedpipe setting"
    assert {"FEEDPIPE_REDIS_URL", "FEEDPIPE_BROKER_URL"} <= set(secret["stringData"])
    assert not [v for v in config["data"].values() if "://" in v and "@" in v], "a password in the ConfigMap"
    assert "FEEDPIPE_METRICS_PORT" not in names  # each role's own default, which the Deployments name
    for deployment in _deployments().values():
        sources = {next(iter(s)): next(iter(s.values()))["name"] for s in _container(deployment)["envFrom"]}
        assert sources == {"configMapRef": config["metadata"]["name"], "secretRef": secret["metadata"]["name"]}


def test_the_broker_is_durable_and_the_pdbs_cover_every_role():
    (broker,) = _kind("StatefulSet")
    args = " ".join(broker["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert broker["spec"]["volumeClaimTemplates"], "the AOF must outlive the pod"
    (secret,) = _kind("Secret")
    assert "@feedpipe-broker:6379/" in secret["stringData"]["FEEDPIPE_BROKER_URL"]
    budgets = _kind("PodDisruptionBudget")
    covered = {pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for pdb in budgets}
    assert covered == set(DEFAULT_METRICS_PORTS)


def test_keda_scales_the_workers_on_every_broker_queue_and_metrics_that_exist():
    (scaled,) = _kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == _deployments()["worker"]["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    lists = {t["metadata"]["listName"] for t in triggers if t["type"] == "redis"}
    assert lists == {f"{OwnKeys(DEFAULT_PREFIX).broker_prefix}{queue}" for queue in QUEUES}
    (secret,) = _kind("Secret")
    for trigger in triggers:
        if trigger["type"] == "redis":
            assert trigger["metadata"]["passwordFromEnv"] in secret["stringData"]
            assert trigger["metadata"]["address"] == "feedpipe-broker:6379"
    exported = _exported()
    queries = [t["metadata"]["query"] for t in triggers if t["type"] == "prometheus"]
    assert queries
    for query in queries:
        for name, matchers in re.findall(r"(feedpipe_[a-z0-9_]+)\{([^}]*)\}", query):
            assert name in exported, f"{name} is not exported by feedpipe/metrics.py"
            for label in re.findall(r"([a-z_]+)\s*=", matchers):
                assert label in exported[name] | SCRAPE_LABELS, f"{name} has no label {label!r}"
