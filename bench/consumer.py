"""The stream consumer's parse-and-dispatch rate, and its memory over a long run.

A ``StreamConsumer`` reads one closed shard of an in-memory source (``records_per_read`` 1000,
as configured by default), parses every record with ``RecordPipeline`` and publishes the events
with ``TaskDispatcher`` to a real Redis broker (a throwaway ``redis-server``), checkpointing on
``tests.fakes.FakeLeaseTable``. The records are a realistic mix built from ``tests/events``
samples, each with its own keys and sequence number: mostly feed-item inserts (feedpipe's own
writes, ignored), then follows, posts, post edits, unfollows, user profiles.

- rate: records per second of ``run(stop_when_idle=True)``, ``events_per_message=200`` against
  the same records with one Celery message per event (baseline);
- memory: VmRSS sampled at every read while the consumer works through 200,000 records made on
  the fly by the source (nothing kept), growth over the whole run against growth over the first
  tenth (a per-record leak would make the whole run grow ~10x the first tenth).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from bench._util import load_event, local_redis, rss_bytes, user_id
from bench.figures import Figure
from feedpipe.adapters.celery_app import publisher_app
from feedpipe.adapters.dispatch import TaskDispatcher
from feedpipe.adapters.redis_feeds import connect_redis
from feedpipe.adapters.streams import ReadResult, Shard
from feedpipe.config import Settings, load_settings
from feedpipe.consumers.collector import tuned_collector
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import DeadLetterSink, RecordPipeline
from feedpipe.core.catalog import QUEUES
from feedpipe.core.keys import OwnKeys
from tests.fakes import FakeDeadLetters, FakeLeaseTable

TARGET_RATE = 20_000
TARGET_GROWTH_MB = 10.0
SHARD = "shardId-00000001705314600000-bench"
SEQ_BASE = 100_000_000_000_000_000_000

# Per 100 records: what a busy table streams. Fan-out writes dominate (each post becomes one
# FEED# item per follower), and those are feedpipe's own and ignored.
MIX = (
    [("feed_item_insert", 80), ("follow_insert", 7), ("post_insert", 5), ("post_modify_likes", 3),
     ("follow_remove", 2), ("user_profile_insert", 2), ("post_remove", 1)]
)
EVENT_KINDS = {"follow_insert", "post_insert", "follow_remove", "post_remove"}


class RecordFactory:
    """Record ``i`` of the stream, distinct keys and sequence numbers, built from the samples.
    Nested parts that do not vary are shared between records (cheap to make, small to hold)."""

    def __init__(self) -> None:
        self.samples = {name: load_event(name) for name, _ in MIX}
        self.kinds = [name for name, share in MIX for _ in range(share)]
        assert len(self.kinds) == 100

    def kind(self, i: int) -> str:
        return self.kinds[(i * 37) % 100]  # spread the kinds through each hundred

    def __call__(self, i: int) -> dict[str, Any]:
        name = self.kind(i)
        sample = self.samples[name]
        body = sample["dynamodb"]
        author, other = user_id(i % 5000), user_id((i * 7919) % 100_000)
        created_ms = 1705314600123 + i
        post_id = f"post_{created_ms}_{author}"
        if name == "feed_item_insert":
            pk, sk = f"FEED#{other}", f"2024-01-15T10:30:00.123Z#{post_id}"
            images = {"NewImage": {**body["NewImage"], "PK": {"S": pk}, "SK": {"S": sk},
                                   "user_id": {"S": other}, "post_id": {"S": post_id}}}
        elif name.startswith("post_"):
            pk, sk = f"POST#{post_id}", "METADATA"
            changed = {"PK": {"S": pk}, "post_id": {"S": post_id}, "author_id": {"S": author},
                       "GSI1PK": {"S": f"USER#{author}"}}
            images = {which: {**body[which], **changed} for which in ("NewImage", "OldImage") if which in body}
        elif name.startswith("follow_"):
            pk, sk = f"USER#{other}", f"FOLLOWING#{author}"
            which = "OldImage" if "OldImage" in body else "NewImage"
            images = {which: {**body[which], "PK": {"S": pk}, "SK": {"S": sk},
                              "follower_id": {"S": other}, "followed_id": {"S": author}}}
        else:
            pk, sk = f"USER#{other}", "PROFILE"
            images = {"NewImage": {**body["NewImage"], "PK": {"S": pk}, "user_id": {"S": other}}}
        return {
            **sample,
            "eventID": f"{i:032x}",
            "dynamodb": {
                **body,
                **images,
                "Keys": {"PK": {"S": pk}, "SK": {"S": sk}},
                "SequenceNumber": str(SEQ_BASE + i),
            },
        }


class InMemorySource:
    """One closed shard of ``total`` records: the ``ShardSource`` protocol, nothing else.
    Records come from ``records`` when given (built ahead), else from ``make`` on each read."""

    stream_id = "arn:aws:dynamodb:us-east-1:000000000000:table/SocialMediaApp/stream/bench"

    def __init__(
        self,
        total: int,
        make: Callable[[int], dict[str, Any]],
        records: list[dict[str, Any]] | None = None,
        on_read: Callable[[int], None] = lambda position: None,
    ) -> None:
        self.total, self.make, self.records, self.on_read = total, make, records, on_read

    def list_shards(self) -> list[Shard]:
        return [Shard(SHARD, (), closed=True)]

    def iterator(self, shard_id: str, after: str | None) -> str:
        return str(0 if after is None else int(after) - SEQ_BASE + 1)

    def read(self, iterator: str, limit: int) -> ReadResult:
        position = int(iterator)
        self.on_read(position)
        end = min(position + limit, self.total)
        made = self.records[position:end] if self.records is not None else None
        batch = made if made is not None else [self.make(i) for i in range(position, end)]
        return ReadResult(batch, None if end >= self.total else str(end))


def broker_messages(client: Any, settings: Settings) -> int:
    own = OwnKeys(settings.key_prefix)
    return sum(int(client.llen(f"{own.prefix}broker:{queue}")) for queue in QUEUES)


def consume(
    app: Any, dead_letters: DeadLetterSink, source: InMemorySource, events_per_message: int
) -> tuple[float, float, Any]:
    """Run a fresh consumer over ``source`` until idle: (wall s, CPU s, totals)."""
    pipeline = RecordPipeline(TaskDispatcher(app, events_per_message), dead_letters, {"private"})
    consumer = StreamConsumer(
        source, LeaseCoordinator(FakeLeaseTable(), "bench"), pipeline, records_per_read=1000,
        idle_poll_seconds=0.001,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    totals = consumer.run(stop_when_idle=True)
    return time.perf_counter() - wall, time.process_time() - cpu, totals


def measure(n_rate: int, n_memory: int, rounds: int) -> dict[str, Any]:
    make = RecordFactory()
    expected_events = sum(1 for i in range(n_rate) if make.kind(i) in EVENT_KINDS)
    with local_redis() as server, tuned_collector():  # the collector as ``feedpipe consume`` sets it
        settings = load_settings({"FEEDPIPE_REDIS_URL": server.url, "FEEDPIPE_BROKER_URL": server.broker_url})
        app = publisher_app(settings)
        client = connect_redis(server.url)
        dead_letters = FakeDeadLetters()  # the bench's records are all good: none is written
        try:
            records = [make(i) for i in range(n_rate)]
            consume(app, dead_letters, InMemorySource(2000, make, records[:2000]), 200)  # warm-up
            client.flushdb()
            rates: dict[str, list[dict[str, Any]]] = {"feedpipe": [], "one_per_event": []}
            for _ in range(rounds):  # interleaved
                for name, per_message in (("feedpipe", 200), ("one_per_event", 1)):
                    wall, cpu, totals = consume(app, dead_letters, InMemorySource(n_rate, make, records), per_message)
                    rates[name].append({
                        "rate": totals.records / wall,
                        "cpu_us_per_record": cpu / totals.records * 1e6,
                        "messages": totals.messages,
                        "ok": totals.records == n_rate and totals.dispatched == expected_events
                        and totals.dead_lettered == 0 and broker_messages(client, settings) == totals.messages,
                    })
                    client.flushdb()
            del records

            # Memory: records made on each read and dropped once published.
            samples: list[tuple[int, int]] = []
            source = InMemorySource(n_memory, make, on_read=lambda pos: samples.append((pos, rss_bytes())))
            gc.collect()
            wall, _, totals = consume(app, dead_letters, source, 200)
            samples.append((n_memory, rss_bytes()))
            queued = broker_messages(client, settings)
        finally:
            client.close()
            app.close()
    best = {name: max(runs, key=lambda r: r["rate"]) for name, runs in rates.items()}
    start = samples[0][1]
    tenth = max(rss for pos, rss in samples if pos <= n_memory // 10)
    return {
        **best,
        "event_share": expected_events / n_rate,
        "all_ok": all(r["ok"] for runs in rates.values() for r in runs),
        "memory": {
            "records": totals.records,
            "messages": totals.messages,
            "messages_in_broker": queued,
            "rate": totals.records / wall,
            "rss_start_mb": start / 2**20,
            "growth_first_tenth_mb": (tenth - start) / 2**20,
            "growth_mb": (max(rss for _, rss in samples) - start) / 2**20,
            "growth_after_first_tenth_mb": (max(rss for _, rss in samples) - tenth) / 2**20,
            "end_minus_start_mb": (samples[-1][1] - start) / 2**20,
            "samples": len(samples),
        },
    }


def run(short: bool) -> list[Figure]:
    n_rate, n_memory, rounds = (4_000, 20_000, 1) if short else (50_000, 200_000, 2)
    m = measure(n_rate, n_memory, rounds)
    ours, base, mem = m["feedpipe"], m["one_per_event"], m["memory"]
    growth, first = mem["growth_mb"], mem["growth_first_tenth_mb"]
    return [
        Figure(
            name="consumer parse-and-dispatch rate (real Redis broker)",
            value=round(ours["rate"]),
            unit="records/s",
            baseline_name="one Celery message per event",
            baseline=round(base["rate"]),
            better="higher",
            target=f">= {TARGET_RATE:,} records/s per process",
            met=ours["rate"] >= TARGET_RATE,
            notes=(
                f"{n_rate:,} records (80% feed-item inserts, 15% events), in-memory source, 1000 a "
                f"read, events_per_message=200; best of {rounds} interleaved rounds"
            ),
            extra={
                "events_per_s": {"feedpipe": round(ours["rate"] * m["event_share"]),
                                 "one_per_event": round(base["rate"] * m["event_share"])},
                "messages": {"feedpipe": ours["messages"], "one_per_event": base["messages"]},
                "cpu_us_per_record": {"feedpipe": round(ours["cpu_us_per_record"], 1),
                                      "one_per_event": round(base["cpu_us_per_record"], 1)},
                "every_record_counted_and_every_message_in_broker": m["all_ok"],
                "celery_app": "publisher_app(settings), as feedpipe consume builds it",
            },
        ),
        Figure(
            name=f"consumer memory growth over {n_memory:,} records",
            value=round(growth, 2),
            unit="MB",
            baseline_name=f"growth over the first {n_memory // 10:,} records",
            baseline=round(first, 2),
            better="lower",
            target=f"flat: growth under {TARGET_GROWTH_MB:g} MB over 200,000 records",
            met=growth < TARGET_GROWTH_MB,
            notes=(
                "VmRSS at every read (1000 records) and at the end; records made by the source on "
                "each read, published to the real broker; ratio ~1 is flat, a per-record leak gives ~0.1"
            ),
            extra={k: round(v, 2) if isinstance(v, float) else v for k, v in mem.items()},
        ),
    ]
