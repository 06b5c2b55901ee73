"""The monitoring shipped in deploy/ holds together: Prometheus accepts the rules and config, every
alert is unit-tested, dashboards and alerts use only metrics the code exports, and the compose
file runs real CLI commands that Prometheus scrapes where they listen."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from feedpipe.cli import main
from feedpipe.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "feedpipe-dashboard.json"
COMPOSE = DEPLOY / "docker-compose.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian: apt-get install prometheus)"
)

JOBS = {"feedpipe-consumer": "consume", "feedpipe-worker": "worker", "feedpipe-beat": "beat"}
ALERT_NAMES = {
    "FeedpipeConsumerLagGrowing",
    "FeedpipeDeadLettersGrowing",
    "FeedpipeDeadLettersDropped",
    "FeedpipeFanoutP99High",
    "FeedpipeNoConsumerHoldsALease",
    "FeedpipeWorkerDown",
}
PANEL_TITLES = {
    "Stream records/s by entity",
    "Events dispatched/s by kind",
    "Tasks/s by outcome",
    "Feed items written/s by store",
    "Max consumer lag by shard",
    "Checkpoint age by shard",
    "GetRecords p99",
    "Fan-out latency p50/p99",
    "Followers per fan-out",
    "Dead letters by source/reason",
    "Task failures and retries",
    "DynamoDB throttles and unprocessed items",
    "Queue depth by queue",
    "Targets up",
    "Task duration p99 by task",
    "Leases held per consumer",
}
# Labels every series has (from the scrape) or that PromQL adds.
SCRAPE_LABELS = {"job", "instance", "le"}
QUEUE_DEPTH_LABELS = ("queue",)


# -- what the code exports -------------------------------------------------------------------

def _exported() -> dict[str, set[str]]:
    """Every series name the code can expose, mapped to its label names."""
    metrics = Metrics.create(CollectorRegistry())
    names: dict[str, set[str]] = {"feedpipe_queue_depth": set(QUEUE_DEPTH_LABELS)}
    for metric in vars(metrics).values():
        family = metric.describe()[0]
        labels = set(getattr(metric, "_labelnames", ()))
        if family.type == "counter":
            names[f"{family.name}_total"] = labels
        elif family.type == "histogram":
            for suffix in ("", "_bucket", "_sum", "_count"):
                names[family.name + suffix] = labels
        else:
            names[family.name] = labels
    return names


def test_the_exported_names_are_read_from_the_code():
    names = _exported()
    assert "feedpipe_stream_records_total" in names
    assert "feedpipe_fanout_latency_seconds_bucket" in names
    assert names["feedpipe_tasks_total"] == {"task", "outcome"}


# -- the queries -----------------------------------------------------------------------------

def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", []) if t.get("expr")]


def _alert_exprs() -> list[str]:
    return [rule["expr"] for rule in _alert_rules()]


QUERIES = {"dashboard": _dashboard_exprs, "alerts": _alert_exprs}


@pytest.mark.parametrize("source", sorted(QUERIES))
def test_every_metric_a_query_uses_is_exported_by_the_code(source):
    exprs = QUERIES[source]()
    exported = _exported()
    used = {name for expr in exprs for name in re.findall(r"feedpipe_[a-z0-9_]+", expr)}
    assert used, f"no feedpipe_ metric found in the {source} queries"
    assert used - set(exported) == set(), f"{source} uses metrics feedpipe/metrics.py does not define"


@pytest.mark.parametrize("source", sorted(QUERIES))
def test_every_label_a_query_uses_exists_on_its_metrics(source):
    exported = _exported()
    for expr in QUERIES[source]():
        for name, matchers in re.findall(r"(feedpipe_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in exported[name] | SCRAPE_LABELS, f"{name} has no label {label!r}: {expr}"
        available = set(SCRAPE_LABELS)
        for name in re.findall(r"feedpipe_[a-z0-9_]+", expr):
            available |= exported.get(name, set())
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                assert label in available, f"grouping by unknown label {label!r}: {expr}"


@pytest.mark.parametrize("source", sorted(QUERIES))
def test_queries_only_name_the_scrape_jobs(source):
    for expr in QUERIES[source]():
        for job in re.findall(r'job\s*=~?\s*"([^"]*)"', expr):
            assert job in JOBS, f"unknown job {job!r}: {expr}"


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(_dashboard_exprs())]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


# -- Prometheus ------------------------------------------------------------------------------

def _promtool(*args: str) -> str:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@needs_promtool
def test_the_alert_rules_are_valid():
    assert "SUCCESS" in _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))


@needs_promtool
def test_the_alert_unit_tests_pass():
    assert "SUCCESS" in _promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))


@needs_promtool
def test_the_prometheus_config_is_valid_and_loads_the_alerts():
    out = _promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert "1 rule files found" in out


def test_every_alert_exists_and_says_what_to_do():
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert set(rules) >= ALERT_NAMES
    for name, rule in rules.items():
        assert rule.get("for"), f"{name} has no for:"
        assert rule["labels"].get("severity") in {"critical", "warning"}, name
        assert rule["annotations"].get("summary"), name
        description = rule["annotations"].get("description", "")
        assert "feedpipe status" in description or "feedpipe dlq" in description, name
    assert "feedpipe dlq list" in rules["FeedpipeDeadLettersGrowing"]["annotations"]["description"]


def test_absence_fires_the_lease_and_worker_alerts():
    rules = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    assert "absent(feedpipe_leases_held" in rules["FeedpipeNoConsumerHoldsALease"]
    assert 'absent(up{job="feedpipe-worker"})' in rules["FeedpipeWorkerDown"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    spec = yaml.safe_load(ALERTS_TEST.read_text())
    assert spec["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert {rule["alert"] for rule in _alert_rules()} <= fires
    assert quiet >= ALERT_NAMES


# -- compose and scrape targets --------------------------------------------------------------

def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _built_here(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run an image built from the repository's Dockerfile."""
    return {
        name: service for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict) and (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    }


def _feedpipe_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the Dockerfile's default target: the feedpipe CLI."""
    return {name: service for name, service in _built_here(compose).items() if "target" not in service["build"]}


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else list(command)


def test_the_compose_file_has_the_whole_stack():
    services = _compose()["services"]
    assert {"redis", "moto", "create-tables", "consumer", "worker", "beat", "prometheus", "grafana",
            "flower"} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")
    assert services["moto"]["image"].startswith("motoserver/moto")
    assert (ROOT / "Dockerfile").is_file()
    assert set(_feedpipe_services(_compose())) == {"create-tables", "consumer", "worker", "beat"}


def test_every_feedpipe_service_runs_a_real_cli_command():
    expected = {"create-tables": ["create-tables"], "consumer": ["consume"], "worker": ["worker", "-c", "2"],
                "beat": ["beat"]}
    for name, service in _feedpipe_services(_compose()).items():
        command = _command(service)
        assert command[0] in main.commands, f"{name}: feedpipe has no command {command[0]!r}"
        assert command == expected[name], name


def test_every_feedpipe_service_is_configured_for_the_stack():
    for name, service in _feedpipe_services(_compose()).items():
        env = service["environment"]
        assert env["FEEDPIPE_REDIS_URL"] == "redis://redis:6379/0", name
        assert env["AWS_ENDPOINT_URL"] == "http://moto:5000", name
        assert env["AWS_DEFAULT_REGION"] and env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"], name
        assert env["FEEDPIPE_METRICS_ADDR"] == "0.0.0.0", name
        assert str(env["FEEDPIPE_METRICS_PORT"]) == "9464", name


def test_every_feedpipe_service_is_health_checked_on_healthz():
    for name, service in _feedpipe_services(_compose()).items():
        if name == "create-tables":
            continue
        port = service["environment"]["FEEDPIPE_METRICS_PORT"]
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"]), name


def test_flower_runs_the_dockerfiles_flower_stage_against_workers_that_send_events():
    compose = _compose()
    flower = _built_here(compose)["flower"]
    assert re.search(rf"^FROM \S+ AS {flower['build']['target']}$", (ROOT / "Dockerfile").read_text(), re.M)
    assert flower["environment"] == compose["services"]["worker"]["environment"]  # the same broker and prefix
    assert compose["services"]["worker"]["environment"]["FEEDPIPE_TASK_EVENTS"] == "true"
    assert "5555:5555" in flower["ports"]


def test_the_compose_broker_is_durable_and_apart_from_the_cache():
    compose = _compose()
    command = " ".join(compose["services"]["broker"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in compose["services"]["broker"]["volumes"])
    assert "--appendonly no" in " ".join(compose["services"]["redis"]["command"])  # the app's cache
    for name, service in _feedpipe_services(compose).items():
        assert service["environment"]["FEEDPIPE_BROKER_URL"] == "redis://broker:6379/0", name
        assert "FEEDPIPE_ALLOW_VOLATILE_BROKER" not in service["environment"], name


def test_every_scrape_target_is_a_compose_service_on_its_metrics_port():
    services = _feedpipe_services(_compose())
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    jobs = {}
    for job in config["scrape_configs"]:
        targets = [t for static in job["static_configs"] for t in static["targets"]]
        assert targets, job["job_name"]
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host in services, f"{target}: no such compose service"
            assert port == str(services[host]["environment"]["FEEDPIPE_METRICS_PORT"]), target
            assert _command(services[host])[0] == JOBS[job["job_name"]], target
        jobs[job["job_name"]] = targets
    assert set(jobs) == set(JOBS)


def test_prometheus_and_grafana_mount_files_that_exist():
    services = _compose()["services"]
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), volume
                mounts[target] = (COMPOSE.parent / source).resolve()
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG
    assert mounts["/etc/prometheus/alerts.yml"] == ALERTS  # rule_files resolve next to the config
    dashboards = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/feedpipe.yml").read_text())
    folder = dashboards["providers"][0]["options"]["path"]
    assert any(t.startswith(folder + "/") and src == DASHBOARD for t, src in mounts.items())
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert source["uid"] == "prometheus" and source["url"] == "http://prometheus:9090"


# -- the dashboard ---------------------------------------------------------------------------

def test_the_dashboard_has_every_panel_on_prometheus():
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = _panels(dashboard)
    assert {p["title"] for p in panels} >= PANEL_TITLES
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] in {"${DS_PROMETHEUS}", "prometheus"}, panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"


def test_histogram_quantiles_aggregate_over_le_and_rates_use_5m():
    for expr in _dashboard_exprs() + _alert_exprs():
        for inner in re.findall(r"histogram_quantile\(\s*[0-9.]+\s*,\s*([^\n]*)", expr):
            assert re.match(r"sum by \((le|le, [a-z_, ]+)\) \(rate\(feedpipe_[a-z0-9_]+_bucket", inner), expr
        for window in re.findall(r"\brate\([^\[]*\[([^\]]+)\]", expr):
            assert window == "5m", expr
