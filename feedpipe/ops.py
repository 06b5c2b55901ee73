"""What the operator commands do: ``status``, ``dlq replay`` and ``rebuild``, CLI-free."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from feedpipe.adapters.celery_app import broker_queue_depths
from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.leases import LeaseTable
from feedpipe.adapters.redis_client import RedisClient
from feedpipe.adapters.streams import StreamError
from feedpipe.config import Settings
from feedpipe.consumers.build import build_source
from feedpipe.consumers.pipeline import RecordPipeline
from feedpipe.core.catalog import REPLAYABLE_TASKS
from feedpipe.core.keys import REGEN_QUEUE, WALK_START, OwnKeys
from feedpipe.core.letters import decode_payload
from feedpipe.core.timestamps import now_timestamp
from feedpipe.feeds.rebuild import rebuild_cache, rebuild_durable
from feedpipe.feeds.stores import Stores


def gather_status(settings: Settings, stores: Stores, client: RedisClient) -> dict[str, Any]:
    """Shards with their checkpoints and lag, queue depths, dead letters, the beat lock (read
    with ``client``, the app's cache Redis)."""
    own = OwnKeys(settings.key_prefix)
    depths = broker_queue_depths(settings)
    return {
        "stream": _stream_status(settings),
        "queues": {
            REGEN_QUEUE: stores.regen_queue.depth(),
            "regen processing": stores.regen_queue.processing_depth(),
            **{f"tasks:{q}": n for q, n in depths.items()},
        },
        "dead_letters": stores.dead_letters.count(),
        "beat_lock_ttl_seconds": int(client.ttl(own.beat_lock)),
    }


def _stream_status(settings: Settings) -> dict[str, Any]:
    dynamodb = make_client("dynamodb")
    source = build_source(settings, dynamodb)
    try:
        stream_id = source.stream_id
        shards = source.list_shards()
    except StreamError as exc:
        return {"error": str(exc)}
    leases = LeaseTable(dynamodb, settings.lease_table_name, stream_id).list()
    now = time.time()
    rows = []
    for shard in shards:
        lease = leases.get(shard.shard_id)
        last = lease.last_record_ms if lease else None
        rows.append({
            "shard": shard.shard_id,
            "parents": list(shard.parent_ids),
            "owner": lease.owner if lease else None,
            "checkpoint": (lease.checkpoint if lease else None) or "(none: starts at TRIM_HORIZON)",
            "finished": bool(lease and lease.finished),
            "checkpoint_age_seconds": _age(lease.updated_at if lease else None, now),
            "last_record_age_seconds": None if last is None else round(now - last / 1000, 1),
        })
    return {"id": stream_id, "shards": rows}


def _age(stamp: Any, now: float) -> float | None:
    if not isinstance(stamp, str):
        return None
    return round(now - datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp(), 1)


@dataclass
class Replay:
    replayed: int = 0
    failed_again: int = 0
    kept: int = 0  # gap markers and unknown sources: nothing to send; they stay
    truncated: int = 0  # cut when stored (too large): cannot be resent; they stay
    sources: dict[str, int] = field(default_factory=dict)


def replay_dead_letters(stores: Stores, pipeline: RecordPipeline, limit: int = 0) -> Replay:
    """Send dead letters (oldest first, the first ``limit`` that can be sent, 0: all) back
    through the path they fell out of: stream records through parsing and dispatch, task events
    to their task, regen jobs to the queue. A stream record that fails again stays, with its
    new reason beside the first. Pages through the store, so letters that cannot be sent (gap
    markers, unknown sources, cut payloads) never block the ones after them, and letters
    written while it runs (a task failing again) wait for the next replay."""
    result = Replay()
    for page in stores.dead_letters.pages(until=now_timestamp()):
        for letter in page:
            if limit and result.replayed + result.failed_again >= limit:
                return result
            _replay_one(stores, pipeline, letter, result)
    return result


def _replay_one(stores: Stores, pipeline: RecordPipeline, letter: dict[str, Any], result: Replay) -> None:
    source = str(letter.get("source", ""))
    kind, _, rest = source.partition(":")
    if letter.get("truncated"):
        result.truncated += 1
        return
    sendable = kind in ("stream", "regen") or (kind == "task" and rest in REPLAYABLE_TASKS)
    if not sendable or str(letter.get("reason", "")).startswith("gap:"):
        result.kept += 1
        return
    payload = decode_payload(letter.get("payload"))
    if kind == "stream":
        prepared = pipeline.prepare([payload], source)
        if prepared.letters:
            stores.dead_letters.note_replay(letter, prepared.letters[0][1])
            result.failed_again += 1
            return
        pipeline.deliver(prepared)
    elif kind == "task":
        pipeline.dispatcher.send(rest, [payload])
    else:
        stores.regen_queue.push([payload])
    stores.dead_letters.remove(letter)
    result.replayed += 1
    result.sources[kind] = result.sources.get(kind, 0) + 1


@dataclass
class RebuildSummary:
    users: int = 0
    cached_members: int = 0
    posts_backfilled: int = 0
    authors_unmerged: int = 0
    failures: dict[str, str] = field(default_factory=dict)


def rebuild_users(
    stores: Stores, users: Iterable[str], durable: bool, progress: Callable[[str], None] = lambda _: None
) -> RebuildSummary:
    """Rebuild each user's feed (the durable one first when ``durable``), then the cache."""
    summary = RebuildSummary()
    for user in users:
        try:
            if durable:
                repaired = rebuild_durable(stores, user)
                summary.posts_backfilled += repaired.posts_backfilled
                summary.authors_unmerged += repaired.authors_unmerged
            summary.cached_members += rebuild_cache(stores, user)
            summary.users += 1
        except Exception as exc:  # one user's failure must not stop an operator's batch
            summary.failures[user] = f"{type(exc).__name__}: {exc}"
        progress(user)
    return summary


ACTIVE_SCAN_COUNT = 1000


def active_users(stores: Stores) -> list[str]:
    """Warm users: a cached feed or a warm marker (SCAN, never KEYS)."""
    users: set[str] = set()
    cursor = WALK_START
    while True:
        cursor, found = stores.cache.warm_users_page(cursor, ACTIVE_SCAN_COUNT)
        users.update(found)
        if cursor == WALK_START:
            return sorted(users)
