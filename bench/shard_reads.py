"""One consumer over 64 shards whose GetRecords calls take 20–50 ms: records per second with the
shards read one after another (``FEEDPIPE_SHARD_READ_CONCURRENCY=1``) and concurrently (the
default, 16).

Everything on the path is feedpipe's and real except the stream: ``StreamConsumer`` with
``DynamoDBStreamSource`` on a real botocore client (requests built and signed, answers parsed:
the records kept raw, as ``build_source`` does), ``RecordPipeline`` parsing each record, ``TaskDispatcher``
publishing to a real Redis broker (a throwaway ``redis-server``), checkpoints on
``tests.fakes.FakeLeaseTable``, the garbage collector set as ``feedpipe consume`` sets it
(``collector.tuned_collector``). The stream is ``bench.stream_model``: 64 closed shards holding
the records of ``bench.consumer`` (80% feed-item inserts, 15% events), each GetRecords answered
after a wall-clock wait drawn uniformly from 20–50 ms.

So the CPU part (botocore, decoding the records' JSON, parsing them, publishing to the broker)
is measured, on this machine's cores; the latency part (the network and the service) is
modelled, a sleep that holds no core. Both are reported: the CPU per record, and the modelled
wait summed over every call.
"""

from __future__ import annotations

import time
from typing import Any

from bench._util import local_redis, set_local_aws_env
from bench.consumer import EVENT_KINDS, RecordFactory, broker_messages
from bench.figures import Figure
from bench.stream_model import StreamModel
from feedpipe.adapters.celery_app import publisher_app
from feedpipe.adapters.dispatch import TaskDispatcher
from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.redis_feeds import connect_redis
from feedpipe.adapters.streams import DynamoDBStreamSource, keep_records_raw
from feedpipe.config import load_settings
from feedpipe.consumers.collector import tuned_collector
from feedpipe.consumers.consumer import StreamConsumer
from feedpipe.consumers.leasing import LeaseCoordinator
from feedpipe.consumers.pipeline import RecordPipeline
from tests.fakes import FakeDeadLetters, FakeLeaseTable

SHARDS = 64
LATENCY = (0.020, 0.050)
CONCURRENCY = 16  # the setting's default
TARGET_RATE = 20_000
# (records a read, records a shard): shards near their tip, where each read brings what came
# since the last one, and a backlog, where every read is full (FEEDPIPE_RECORDS_PER_READ).
FULL = [(100, 500), (1000, 2000)]
SHORT = [(100, 100)]
TABLE = "SocialMediaApp"


def consume(app: Any, records: list[dict[str, Any]], concurrency: int, per_read: int) -> dict[str, Any]:
    """One fresh consumer over a fresh model of the stream, until every shard has ended."""
    model = StreamModel(SHARDS, records, LATENCY)
    streams, dynamodb = make_client("dynamodbstreams", max_pool=max(10, concurrency)), make_client("dynamodb")
    model.attach(streams, dynamodb)
    consumer = StreamConsumer(
        DynamoDBStreamSource(keep_records_raw(streams), dynamodb, TABLE), LeaseCoordinator(FakeLeaseTable(), "bench"),
        RecordPipeline(TaskDispatcher(app, 200), FakeDeadLetters(), {"private"}),
        records_per_read=per_read, read_concurrency=concurrency, idle_poll_seconds=0.001,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    totals = consumer.run(stop_when_idle=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rate": totals.records / wall, "wall_s": wall, "cpu_s": cpu, "records": totals.records,
            "messages": totals.messages, "dispatched": totals.dispatched, "calls": model.calls,
            "modelled_wait_s": model.waited, "cpu_us_per_record": cpu / totals.records * 1e6}


def measure(cases: list[tuple[int, int]]) -> list[dict[int, dict[str, Any]]]:
    """For each (records a read, records a shard): a sequential run and a concurrent one."""
    set_local_aws_env()
    make = RecordFactory()
    records = [make(i) for i in range(max(per_shard for _, per_shard in cases))]
    measured = []
    with local_redis() as server, tuned_collector():  # the collector as ``feedpipe consume`` sets it
        settings = load_settings({"FEEDPIPE_REDIS_URL": server.url, "FEEDPIPE_BROKER_URL": server.broker_url})
        app, client = publisher_app(settings), connect_redis(server.url)
        try:
            consume(app, records[:50], CONCURRENCY, 50)  # warm-up: imports, connections
            for per_read, per_shard in cases:
                events = sum(1 for i in range(per_shard) if make.kind(i) in EVENT_KINDS) * SHARDS
                runs: dict[int, dict[str, Any]] = {}
                for concurrency in (1, CONCURRENCY):
                    client.flushdb()
                    run = runs[concurrency] = consume(app, records[:per_shard], concurrency, per_read)
                    run["ok"] = (run["records"] == per_shard * SHARDS and run["dispatched"] == events
                                 and broker_messages(client, settings) == run["messages"])
                measured.append(runs)
        finally:
            client.close()
            app.close()
    return measured


def run(short: bool) -> list[Figure]:
    cases = SHORT if short else FULL
    measured = measure(cases)
    return [figure(per_read, per_shard, runs) for (per_read, per_shard), runs in zip(cases, measured, strict=True)]


def figure(per_read: int, per_shard: int, runs: dict[int, dict[str, Any]]) -> Figure:
    ours, base = runs[CONCURRENCY], runs[1]
    return Figure(
        name=f"consumer records/s, {SHARDS} shards at 20-50 ms per GetRecords, {per_read:,} records a read",
        value=round(ours["rate"]),
        unit="records/s",
        baseline_name="the same shards read one after another",
        baseline=round(base["rate"]),
        better="higher",
        target=f">= {TARGET_RATE:,} records/s per consumer over {SHARDS} modelled shards",
        met=ours["rate"] >= TARGET_RATE,
        notes=(
            f"{per_shard * SHARDS:,} records; FEEDPIPE_SHARD_READ_CONCURRENCY={CONCURRENCY} against 1; GetRecords "
            "latency modelled (a wall-clock wait, uniform 20-50 ms); botocore, JSON decoding, parsing and "
            "publishing to a real Redis broker measured (CPU)"
        ),
        extra={
            **{f"concurrency_{c}": {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
               for c, r in runs.items()},
            "cpu_bound_rate": round(ours["records"] / ours["cpu_s"]),  # if every wait took no time
            "latency_bound_rate_sequential": round(base["records"] / base["modelled_wait_s"]),  # if CPU were free
        },
    )
