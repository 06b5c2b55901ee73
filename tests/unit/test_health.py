"""/healthz and /readyz: each check made to fail, on the real consumer loop, the real lease
balancer and the real HTTP server, with fakes for what they watch."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, Counter

from feedpipe.beat import _ticking_scheduler, run_beat
from feedpipe.config import load_settings
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.keys import OwnKeys
from feedpipe.dev.local import free_port, wait_for
from feedpipe.endpoints import serve
from feedpipe.health import (
    BeatProbe,
    ConsumerProbe,
    Heartbeat,
    Verdict,
    WorkerProbe,
    beat_stall_seconds,
    consumer_stall_seconds,
)
from feedpipe.worker_probe import broker_checker
from tests.fakes import FakeDeadLetters, FakeDispatcher, FakeLeaseTable, FakeShardSource, follow_record


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeLeases:
    held: dict[str, Any] = field(default_factory=dict)
    fair_share: int | None = 1
    balanced: bool = True


def _consumer_probe(clock: FakeClock, leases: FakeLeases | None = None) -> ConsumerProbe:
    return ConsumerProbe(Heartbeat(clock), Heartbeat(clock), leases or FakeLeases({"s": 1}), stall_seconds=60)


# -- the consumer ----------------------------------------------------------------------------

def test_a_consumer_whose_loop_stalls_is_not_live():
    clock = FakeClock()
    probe = _consumer_probe(clock)
    assert probe.live().ok and probe.ready().ok
    clock.now += 61
    live = probe.live()
    assert not live.ok and "consumer loop stalled: no progress for 61.0s" in live.reason
    probe.loop.beat()
    assert probe.live().ok


def test_a_consumer_whose_rounds_stop_finishing_is_alive_but_not_ready():
    clock = FakeClock()
    probe = _consumer_probe(clock)
    clock.now += 61
    probe.loop.beat()  # backing off through an outage: the loop comes around, no round finishes
    assert probe.live().ok
    ready = probe.ready()
    assert not ready.ok and "consumer rounds stalled" in ready.reason


def test_a_consumer_short_of_its_share_or_that_never_looked_is_not_ready():
    clock = FakeClock()
    assert "has not looked" in _consumer_probe(clock, FakeLeases(fair_share=None)).ready().reason
    short = _consumer_probe(clock, FakeLeases({}, fair_share=2, balanced=False)).ready()
    assert not short.ok and short.reason == "holds 0 leases, fewer than its fair share of 2"
    assert short.details == {"leases_held": 0, "fair_share": 2}


def test_the_real_loop_beats_its_heartbeats_and_a_hung_publish_stalls_it():
    """The consumer's own loop, hung in a publish (a socket that never answers), goes stale
    and recovers once the publish returns."""
    source = FakeShardSource()
    source.add_shard("s", [follow_record(i, "a", f"u{i}") for i in range(1, 4)])
    release, entered = threading.Event(), threading.Event()

    class HangingDispatcher(FakeDispatcher):
        def dispatch(self, events: Any) -> int:
            entered.set()
            release.wait(30)
            return super().dispatch(events)

    pipeline = RecordPipeline(HangingDispatcher(), FakeDeadLetters(), {"private"})
    consumer = StreamConsumer(source, LeaseCoordinator(FakeLeaseTable(), "solo"), pipeline, idle_poll_seconds=0.01)
    probe = ConsumerProbe(consumer.loop_heartbeat, consumer.round_heartbeat, consumer.leases, stall_seconds=0.3)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert entered.wait(10)
        wait_for(lambda: not probe.live().ok, 10, "the hung loop to go stale")
        assert "stalled" in probe.ready().reason
        release.set()
        wait_for(lambda: probe.live().ok and probe.ready().ok, 10, "the loop to come around again")
        assert probe.ready().details == {"leases_held": 1, "fair_share": 1}
    finally:
        release.set()
        consumer.request_stop()
        thread.join(10)


def test_a_consumer_is_ready_only_at_its_fair_share_of_leases():
    clock = FakeClock()
    table = FakeLeaseTable()
    for shard in ("s1", "s2", "s3", "s4"):
        table.create(shard, ())
    first = LeaseCoordinator(table, "first", failover_seconds=10, clock=clock)
    first.tick()
    assert len(first.held) == 4 and first.balanced

    second = LeaseCoordinator(table, "second", failover_seconds=10, clock=clock)
    second.tick()  # steals one a look: 1 of its share of 2
    probe = ConsumerProbe(Heartbeat(clock), Heartbeat(clock), second, stall_seconds=60)
    assert not probe.ready().ok and "fewer than its fair share of 2" in probe.ready().reason
    clock.now += 5
    first.tick()
    second.tick()
    assert len(second.held) == 2 and probe.ready().ok


def test_a_consumer_left_nothing_by_a_balanced_group_is_ready():
    """4 shards, 3 consumers: 2, 2 and 0 is as balanced as the balancer makes it."""
    clock = FakeClock()
    table = FakeLeaseTable()
    for shard in ("s1", "s2", "s3", "s4"):
        table.create(shard, ())
    a, b = (LeaseCoordinator(table, name, failover_seconds=10, clock=clock) for name in "ab")
    a.tick()
    for _ in range(3):  # b steals one a look
        clock.now += 5
        a.tick()
        b.tick()
    assert (len(a.held), len(b.held)) == (2, 2)
    c = LeaseCoordinator(table, "c", failover_seconds=10, clock=clock)
    c.tick()
    assert c.held == {} and c.fair_share == 2 and c.balanced


# -- beat and the worker ---------------------------------------------------------------------

def test_beat_is_ready_as_leader_or_standby_and_not_live_when_stalled():
    clock = FakeClock()
    probe = BeatProbe(Heartbeat(clock), stall_seconds=90)
    assert not probe.ready().ok and probe.ready().reason == "not started"
    probe.role = "standby"
    assert probe.ready() == Verdict(True, "waiting for the beat lock as a standby", {"role": "standby"})
    probe.role = "leader"
    assert probe.ready().ok and "holds the beat lock" in probe.ready().reason
    clock.now += 91
    assert not probe.live().ok and "beat (leader) stalled" in probe.live().reason
    assert not probe.ready().ok


def _worker_probe(**overrides: Any) -> WorkerProbe:
    values: dict[str, Any] = {
        "loop_stall": lambda: 1.0, "loop_stall_seconds": 60.0, "stuck_after_seconds": 600.0, "running": list,
        "broker_error": lambda: None, "consuming": lambda: True,
    }
    return WorkerProbe(**{**values, **overrides})


def test_a_worker_with_a_task_past_the_visibility_timeout_is_not_live():
    assert _worker_probe(running=lambda: [("feedpipe.fanout.chunk", 30.0)]).live().ok
    stuck = _worker_probe(running=lambda: [("feedpipe.fanout.chunk", 30.0), ("feedpipe.regen.rebuild", 601.0)]).live()
    assert not stuck.ok
    assert stuck.reason == "1 task(s) stuck: feedpipe.regen.rebuild running for 601.0s (visibility timeout 600s)"


def test_a_worker_whose_event_loop_stalls_is_not_live_unless_it_is_reconnecting():
    assert _worker_probe().live().details == {"last_progress_seconds": 1.0}
    stalled = _worker_probe(loop_stall=lambda: 61.0).live()
    assert not stalled.ok and stalled.reason == "worker event loop stalled: no progress for 61.0s (bound 60s)"
    assert _worker_probe(loop_stall=lambda: None).live().ok  # not consuming: a reconnect or a shutdown


def test_a_real_worker_loop_blocked_by_a_task_stops_its_heartbeat(monkeypatch, broker_server):
    """On a real Redis broker the worker runs kombu's event loop, which fires the heartbeat's
    timer; the solo pool runs a task on that loop itself, so a task that does not return blocks
    it, as a hung prefork event loop would."""
    from celery.contrib.testing.worker import start_worker

    from feedpipe import worker_probe

    monkeypatch.setattr(worker_probe.LoopHeartbeat, "interval", 0.05)
    app = Celery("loop-test", broker=broker_server.broker_url)
    app.conf.broker_transport_options = {"global_keyprefix": "loop-test:"}
    release = threading.Event()

    @app.task(name="block")
    def block() -> None:
        release.wait(30)

    worker_probe.watch_event_loop(app)
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        wait_for(lambda: (worker_probe.loop_stall() or 0) < 0.5, 10, "the loop heartbeat")
        block.delay()
        try:
            wait_for(lambda: (worker_probe.loop_stall() or 0) > 0.5, 10, "the blocked loop to go stale")
        finally:
            release.set()
        wait_for(lambda: (worker_probe.loop_stall() or 0) < 0.5, 10, "the loop to come around again")
    assert worker_probe.loop_stall() is None  # stopped: no longer judged


def test_a_worker_is_ready_only_consuming_with_its_broker_answering():
    assert _worker_probe().ready().ok
    assert _worker_probe(consuming=lambda: False).ready().reason == "not consuming from the broker yet"
    lost = _worker_probe(broker_error=lambda: "ConnectionRefusedError: [Errno 111]").ready()
    assert not lost.ok and lost.reason == "broker unreachable: ConnectionRefusedError: [Errno 111]"


def test_the_broker_check_asks_a_real_broker_and_says_why_not():
    port = free_port()  # nothing listens there
    app = Celery("probe-test", broker=f"redis://127.0.0.1:{port}/0")
    app.conf.broker_transport_options = {"socket_connect_timeout": 1}
    clock = FakeClock()
    check = broker_checker(app, clock)
    error = check()
    assert error and ("Connection" in error or "refused" in error.lower()), error
    assert check() == error  # cached for the probes that come close together


def test_the_stall_bounds_come_from_the_settings():
    assert consumer_stall_seconds(load_settings({})) == 60
    assert consumer_stall_seconds(load_settings({"FEEDPIPE_LEASE_FAILOVER_SECONDS": "40"})) == 120
    assert beat_stall_seconds(load_settings({"FEEDPIPE_BEAT_LOCK_SECONDS": "30"})) == 90


# -- the HTTP server -------------------------------------------------------------------------

@dataclass
class SwitchProbe:
    alive: bool = True
    is_ready: bool = True
    broken: bool = False

    def live(self) -> Verdict:
        if self.broken:
            raise RuntimeError("cannot tell")
        return Verdict(self.alive, "live" if self.alive else "loop stalled", {"n": 1})

    def ready(self) -> Verdict:
        return Verdict(self.is_ready, "ready" if self.is_ready else "no leases")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def server():
    registry = CollectorRegistry()
    Counter("feedpipe_probe_test_total", "a test counter", registry=registry).inc()
    probe = SwitchProbe()
    port = free_port()
    httpd = serve(registry, port, "127.0.0.1", probe)
    yield f"http://127.0.0.1:{port}", probe
    assert httpd is not None
    httpd.shutdown()
    httpd.server_close()


def test_metrics_health_and_readiness_each_on_their_own_path(server):
    base, probe = server
    status, body = _get(f"{base}/metrics")
    assert status == 200 and "feedpipe_probe_test_total 1.0" in body
    assert _get(f"{base}/healthz") == (200, json.dumps({"n": 1, "ok": True, "reason": "live"}) + "\n")
    assert _get(f"{base}/readyz")[0] == 200
    status, body = _get(f"{base}/anything")
    assert status == 404 and "feedpipe_" not in body


def test_a_failing_check_answers_503_with_its_reason(server):
    base, probe = server
    probe.alive, probe.is_ready = False, False
    status, body = _get(f"{base}/healthz")
    assert status == 503 and json.loads(body) == {"ok": False, "reason": "loop stalled", "n": 1}
    assert _get(f"{base}/readyz") == (503, json.dumps({"ok": False, "reason": "no leases"}) + "\n")
    probe.broken = True
    status, body = _get(f"{base}/healthz")
    assert status == 503 and json.loads(body)["reason"] == "check failed: RuntimeError('cannot tell')"


def test_port_zero_serves_nothing():
    assert serve(CollectorRegistry(), 0, "127.0.0.1", SwitchProbe()) is None


def test_the_beat_scheduler_beats_the_heartbeat_on_every_tick(tmp_path):
    clock = FakeClock()
    heartbeat = Heartbeat(clock)
    scheduler = _ticking_scheduler(heartbeat)(app=Celery("tick-test", broker="memory://"),
                                               schedule_filename=str(tmp_path / "schedule"))
    try:
        clock.now += 500
        assert heartbeat.age() == 500
        scheduler.tick()
        assert heartbeat.age() == 0
    finally:
        scheduler.close()


def test_a_beat_waiting_for_the_lock_is_a_live_and_ready_standby(monkeypatch):
    server = fakeredis.FakeServer()
    monkeypatch.setattr("feedpipe.beat.connect_redis", lambda _: fakeredis.FakeStrictRedis(server=server))
    settings = load_settings({})
    holder = fakeredis.FakeStrictRedis(server=server).lock(OwnKeys(settings.key_prefix).beat_lock, timeout=60)
    assert holder.acquire()
    probe, stop = BeatProbe(Heartbeat(), stall_seconds=3), threading.Event()
    thread = threading.Thread(target=run_beat, args=(settings, stop, probe), daemon=True)
    thread.start()
    try:
        wait_for(lambda: probe.role == "standby", 10, "beat to wait as a standby")
        first = probe.heartbeat.at
        wait_for(lambda: probe.heartbeat.at > first, 10, "the standby's loop to come around")
        assert probe.ready() == Verdict(True, "waiting for the beat lock as a standby", {"role": "standby"})
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_a_standby_told_to_stop_as_the_lock_comes_free_gives_it_back_and_never_schedules(monkeypatch):
    """A standby beat got SIGTERM, then took the freed lock 20 ms later and ran Celery beat until
    it was killed (found in an e2e teardown): its stop flag was looked at only while the lock
    was not free."""
    stop, released = threading.Event(), []

    class FreedAsStopped:
        def acquire(self, **_: object) -> bool:
            stop.set()  # SIGTERM arrives while the standby waits; the leader's lock expires
            return True

        def release(self) -> None:
            released.append(True)

    class Redis:
        def lock(self, *_: object, **__: object) -> FreedAsStopped:
            return FreedAsStopped()

    def never(_: object) -> None:
        raise AssertionError("a beat told to stop built its scheduling app")

    monkeypatch.setattr("feedpipe.beat.connect_redis", lambda _: Redis())
    monkeypatch.setattr("feedpipe.beat.publisher_app", never)
    probe = BeatProbe(Heartbeat(), stall_seconds=3)
    assert run_beat(load_settings({}), stop, probe) == 0
    assert released == [True] and probe.role == "standby"


def test_running_tasks_are_read_from_what_celery_tracks_in_the_main_process(monkeypatch):
    from celery.worker import state

    from feedpipe.worker_probe import running_tasks

    @dataclass(frozen=True)
    class Accepted:
        name: str
        time_start: float | None

    now = 1_000_000.0
    monkeypatch.setattr("feedpipe.worker_probe.time.time", lambda: now)
    requests = {Accepted("feedpipe.fanout.chunk", now - 700), Accepted("feedpipe.regen.drain", None)}
    monkeypatch.setattr(state, "active_requests", requests)
    assert running_tasks() == [("feedpipe.fanout.chunk", 700.0)]  # one not yet started in a child is not counted
