"""A real Prometheus (Debian's package) scrapes a running consumer, a prefork worker and beat
while the app's traffic flows; its HTTP API must then hold every series the dashboard and the
alerts use, with the values the workload implies. ``promtool check metrics`` passes on each
process's ``/metrics``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feedpipe.core import keys
from feedpipe.dev.local import free_port, stop_process, wait_for
from tests.e2e.harness import Processes, World, make_world, pipeline_env, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FOLLOWERS = 300
POSTS = 3
JOBS = {"worker": "feedpipe-worker", "consumer": "feedpipe-consumer", "beat": "feedpipe-beat"}


@pytest.fixture
def ports() -> dict[str, int]:
    return {name: free_port() for name in JOBS}


@pytest.fixture
def prometheus(tmp_path: Path, ports: dict[str, int]) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    port = free_port()
    scrape = "\n".join(
        f"  - job_name: {job}\n    static_configs: [{{targets: ['127.0.0.1:{ports[name]}']}}]"
        for name, job in JOBS.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{scrape}\n")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"), start_new_session=True,  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{url}/-/ready") is not None, 60, "prometheus")
        yield url
    finally:
        stop_process(proc)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    body = _get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    assert body is not None, promql
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def value(prometheus: str, promql: str) -> float:
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else float("nan")


def used_metric_names() -> set[str]:
    """Every feedpipe series the shipped dashboard and alert rules use."""
    text = ""
    for path in [ROOT / "deploy/grafana/feedpipe-dashboard.json", ROOT / "deploy/prometheus/alerts.yml"]:
        if path.exists():
            text += path.read_text()
    names = set(re.findall(r"feedpipe_[a-z0-9_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names} - {"feedpipe_"}


def workload(world: World) -> None:
    world.user("star", "late")
    fans = [f"m{i:03d}" for i in range(FOLLOWERS)]
    world.bulk_follow(fans, "star")
    world.post("star", "old")
    world.historic_fanout("old", warm=fans[:20])
    world.mark_history_consumed()
    for n in range(POSTS):
        world.post("star", f"new{n}")
    world.delete("new0")
    world.follow("late", "star")
    world.warm.add("late")  # the app queues a regen job on follow; beat's drain builds his cache
    world.dynamodb.put_item(TableName="SocialMediaApp", Item={  # one record to dead-letter
        "PK": {"S": "POST#bad"}, "SK": {"S": "METADATA"}, "created_at": {"S": "never"}})


def test_prometheus_scrapes_every_series_the_dashboard_and_alerts_use(
    aws_env, redis_urls, real_redis, tmp_path, ports, prometheus
) -> None:
    env = pipeline_env(aws_env, redis_urls, FEEDPIPE_METRICS_ADDR="127.0.0.1",
                       FEEDPIPE_REGEN_DRAIN_EVERY_SECONDS="0.5")
    world = make_world(env, real_redis)
    workload(world)
    procs = Processes(env, tmp_path)
    try:
        # Each process serves /metrics on its own port.
        procs.env = {**env, "FEEDPIPE_METRICS_PORT": str(ports["worker"])}
        procs.worker(2, "--max-tasks-per-child", "1")  # every child exits after one task
        procs.env = {**env, "FEEDPIPE_METRICS_PORT": str(ports["beat"])}
        procs.beat()
        procs.env = {**env, "FEEDPIPE_METRICS_PORT": str(ports["consumer"])}
        procs.consumer()
        wait_until(world.settled, 120, "the workload's feeds")

        # Each live new post to every fan and to "late" (who followed first), plus his backfill of 3.
        expected_writes = (POSTS - 1) * (FOLLOWERS + 1) + 3
        try:
            wait_until(lambda: value(prometheus, 'sum(feedpipe_feed_items_written_total{store="dynamodb"})')
                       == expected_writes, 60, "prometheus to scrape exactly the writes, across child restarts")
        except AssertionError:
            scraped = {name: (_get(f"http://127.0.0.1:{port}/metrics") or "")[-3000:] for name, port in ports.items()}
            written = query(prometheus, 'sum by (store) (feedpipe_feed_items_written_total)')
            raise AssertionError(f"{written} {scraped}") from None
        wait_until(lambda: value(prometheus, "sum(feedpipe_regen_rebuilds_total)") >= 1, 60, "a regen drain")

        # The consumer is a scrape target of its own: the worker's figures above say nothing of
        # whether its last scrape came after its last batch was counted.
        consumer_counts = {
            'sum(feedpipe_dead_letters_total{source="stream",reason="unparseable_record"})': 1,
            'sum(feedpipe_events_dispatched_total{kind="post_published"})': POSTS,
            'sum(feedpipe_events_dispatched_total{kind="post_retracted"})': 1,
        }
        wait_until(lambda: all(value(prometheus, q) == n for q, n in consumer_counts.items()), 60,
                   "prometheus to scrape the consumer's counts")
        assert value(prometheus, 'sum(feedpipe_stream_records_total{entity="feed"})') >= FOLLOWERS
        assert value(prometheus, "sum(feedpipe_fanout_followers_count)") == POSTS - 1  # new0 was deleted first
        assert value(prometheus, 'sum(feedpipe_feed_items_written_total{store="redis"})') >= 20 * (POSTS - 1)
        assert value(prometheus, 'sum(feedpipe_tasks_total{outcome="success"})') >= 4
        assert value(prometheus, "max(feedpipe_leases_held)") == 1
        assert value(prometheus, 'max(feedpipe_queue_depth{queue="dead_letters"})') == 1
        assert value(prometheus, 'up{job="feedpipe-worker"}') == 1
        missing = sorted(
            n for n in used_metric_names() if not query(prometheus, f'{{__name__=~"{n}(_bucket|_count|_sum)?"}}')
        )
        assert not missing, f"used by the dashboard or alerts but never scraped: {missing}"

        for name, port in ports.items():
            text = _get(f"http://127.0.0.1:{port}/metrics")
            assert text is not None, name
            if shutil.which("promtool"):
                check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
                assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}"
        assert real_redis.llen(keys.REGEN_QUEUE) == 0
    finally:
        procs.stop_all()
