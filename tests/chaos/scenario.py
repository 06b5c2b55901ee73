"""What the fault and chaos tests share: a world with a big account and warm feeds, the app's
traffic (fixed or seeded), feedpipe processes by role, and the reliability report.

Every test ends in ``finish``: wait (with a deadline) for every durable and cached feed to be
exactly what the app's writes imply, write the test's figures as one JSON line to the report,
then assert, with a diff of the wrong feeds, the seed and the processes' logs.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.leases import LeaseTable
from feedpipe.adapters.streams import DynamoDBStreamSource
from feedpipe.core import keys
from feedpipe.dev.local import LocalBackendError, stop_process, wait_for
from tests.e2e.harness import LEASES, TABLE, Processes, World, wait_until
from tests.faults import injected_counts
from tests.reliability import write_report

POLL_SECONDS = 1.0
MAX_POSTS_PER_AUTHOR = 15  # under the backfill's 20: World.expected_feeds relies on it


# -- the world -----------------------------------------------------------------------------


def build_history(world: World, fans: int, warm: int, authors: tuple[str, ...] = ()) -> list[str]:
    """Before the consumer starts: "star" followed by ``fans`` fans, "alice" by a few of them,
    and ``warm`` fans (plus bob) active, their cached feeds built from "news"'s post n0.

    Warm users keep n0, which is never deleted, so removals never empty a warm feed (an
    emptied feed goes cold by design, and which removal empties it depends on task order)."""
    world.user("star", "alice", "bob", "carol", "dave", "newbie", "news", *authors)
    fan_ids = [f"f{i:04d}" for i in range(fans)]
    warm_ids = [*fan_ids[:warm], "bob"]
    world.bulk_follow(fan_ids, "star")
    world.bulk_follow([*fan_ids[:40], "bob"], "alice")
    world.bulk_follow(warm_ids, "news")
    world.post("news", "n0")
    world.historic_fanout("n0", warm=warm_ids)
    world.mark_history_consumed()
    return fan_ids


def steady_traffic(world: World, fans: list[str], tag: str = "") -> None:
    """A fixed slice of the app's traffic: a big fan-out, a small one, follows, unfollows, a
    soft and a hard delete, a private post. ``tag`` keeps post ids unique across calls."""
    world.post("star", f"s1{tag}")
    world.post("alice", f"a1{tag}")
    world.unfollow(fans[1], "star")
    world.post("star", f"s2{tag}")
    world.delete(f"s2{tag}")
    world.post("alice", f"a2{tag}")
    world.remove(f"a2{tag}")
    world.post("star", f"s3{tag}", visibility="private")
    if tag == "":
        world.follow("newbie", "star")
        world.follow("carol", "alice")
        world.follow("dave", "alice")
        world.unfollow("dave", "alice")
        world.follow(fans[60], "alice")  # a warm feed gets a backfill


class RecordCounter:
    """Stream records the app's live writes cause, counted on the app's own client: moto emits
    one record per item written (even for a no-op write), and the app's paths (``AppWriter``,
    non-transactional) write one item a call. Feedpipe's own feed-item writes, which the
    consumer reads and ignores, are not counted."""

    def __init__(self, dynamodb: Any) -> None:
        self.records = 0
        for operation in ("PutItem", "UpdateItem", "DeleteItem"):
            dynamodb.meta.events.register(f"after-call.dynamodb.{operation}", self._count)

    def _count(self, http_response: Any, **_: Any) -> None:
        self.records += http_response.status_code < 300


def stream_checkpoint(world: World) -> str | None:
    """The checkpoint of the table's (single, on moto) shard."""
    source = DynamoDBStreamSource(make_client("dynamodbstreams"), world.dynamodb, TABLE)
    leases = LeaseTable(world.dynamodb, LEASES, source.stream_id).list()
    return next((lease.checkpoint for lease in leases.values()), None)


# -- processes by role ---------------------------------------------------------------------


@dataclass
class Crew:
    """One consumer and N prefork workers, each restartable by role."""

    procs: Processes
    workers: int = 1
    concurrency: int = 2
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def roles(self) -> list[str]:
        return ["consumer", *(f"worker{i}" for i in range(self.workers))]

    def start(self, role: str | None = None) -> None:
        for name in [role] if role else self.roles:
            if name == "consumer":
                self.running[name] = self.procs.consumer()
            else:
                self.running[name] = self.procs.worker(self.concurrency)

    def kill9(self, role: str) -> None:
        self.procs.kill9(self.running[role])

    def exited(self) -> list[str]:
        return [role for role, proc in self.running.items() if proc.poll() is not None]


# -- the outcome ---------------------------------------------------------------------------


def wrong_feeds(world: World) -> dict[str, tuple[list[str], list[str]]]:
    """Every feed that is not what it must be: ``durable:{user}`` / ``cached:{user}`` ->
    (what is there, what must be)."""
    wrong = {}
    durable, expected = world.durable_feeds(), world.expected_feeds()
    for user in set(durable) | set(expected):
        if durable.get(user, set()) != expected.get(user, set()):
            wrong[f"durable:{user}"] = (sorted(durable.get(user, ())), sorted(expected.get(user, ())))
    cached = world.cached_feeds()
    want = world.expected_cached(cached)
    for user in set(cached) | set(want):
        if cached.get(user) != want.get(user):
            wrong[f"cached:{user}"] = (sorted(cached.get(user, ())), sorted(want.get(user, ())))
    return wrong


def feed_items_checked(world: World) -> int:
    return sum(map(len, world.expected_feeds().values())) + sum(map(len, world.expected_cached().values()))


def feed_items_wrong(wrong: dict[str, tuple[list[str], list[str]]]) -> int:
    """(feed, post) pairs missing or extra, over every wrong feed."""
    return sum(len(set(there) ^ set(due)) for there, due in wrong.values())


def stop_beat_once_drained(world: World, beat: subprocess.Popen, timeout: float) -> None:
    """Wait until the app's regen jobs are all taken and handed to tasks, then stop ``beat``:
    its drains (every half second in these tests) would otherwise keep the broker busy for
    ever, and ``finish`` would wait out its whole timeout before judging the feeds."""
    queue = world.stores.regen_queue
    wait_until(lambda: queue.depth() == 0 and queue.processing_depth() == 0, timeout, "the regen jobs to be drained")
    stop_process(beat)


def finish(world: World, procs: Processes, figures: dict[str, Any], report: Path, timeout: float, *,
           started: float, faults_dir: Path | None = None) -> None:
    """Wait for exact feeds, report the figures (with the faults injected, read from
    ``faults_dir``), assert. ``started`` is when the test began (its duration is reported)."""
    with contextlib.suppress(LocalBackendError):  # judged below, with a diff
        # Each check scans the whole table, on the moto the pipeline needs: not too often.
        wait_for(world.settled, timeout, "every durable and cached feed to be exact", interval=POLL_SECONDS)
    wrong = wrong_feeds(world)
    figures.update(feed_items_checked=feed_items_checked(world), wrong_feeds=len(wrong),
                   feed_items_wrong=feed_items_wrong(wrong), seconds=round(time.monotonic() - started, 1))
    if faults_dir is not None:
        figures["faults"] = dict(injected_counts(faults_dir))
    write_report(report, figures)
    sample = dict(sorted(wrong.items())[:5])
    assert not wrong, (
        f"{figures.get('test')} seed={figures.get('seed')}: {len(wrong)} feeds wrong, e.g. {sample}\n"
        f"{procs.logs()}"
    )


# -- seeded traffic ------------------------------------------------------------------------


@dataclass
class RandomApp:
    """The app's users doing random things, one write per step, the model kept in ``world``."""

    world: World
    rng: random.Random
    users: list[str]
    protected: frozenset[str] = frozenset({"n0"})
    posts_made: int = 0

    def steps(self, count: int, big_posts: int) -> Iterator[str]:
        """``count`` writes, ``big_posts`` of them by "star" (a fan-out to every fan)."""
        big_at = set(self.rng.sample(range(count), big_posts))
        for step in range(count):
            yield self._big_post() if step in big_at else self._step()

    def _step(self) -> str:
        roll = self.rng.random()
        if roll < 0.40:
            return self._post(self.rng.choice(self.users))
        if roll < 0.60:
            return self._follow()
        if roll < 0.72:
            return self._unfollow()
        if roll < 0.95:
            return self._retract()
        return self._post(self.rng.choice(self.users), visibility="private")

    def _post(self, author: str, visibility: str = "public") -> str:
        live = sum(1 for a, alive in self.world.posts.values() if a == author and alive)
        if live >= MAX_POSTS_PER_AUTHOR:
            return self._retract()
        self.posts_made += 1
        self.world.post(author, f"r{self.posts_made:04d}", visibility=visibility)
        return "post"

    def _big_post(self) -> str:
        self.posts_made += 1
        self.world.post("star", f"big{self.posts_made:04d}")
        return "big_post"

    def _follow(self) -> str:
        follower, author = self.rng.sample(self.users, 2)
        if follower in self.world.follows[author]:
            return self._unfollow()
        self.world.follow(follower, author)
        return "follow"

    def _unfollow(self) -> str:
        edges = [(f, a) for a in [*self.users, "star"] for f in sorted(self.world.follows[a])]
        follower, author = self.rng.choice(edges)
        self.world.unfollow(follower, author)
        return "unfollow"

    def _retract(self) -> str:
        live = sorted(p for p, (_, alive) in self.world.posts.items() if alive and p not in self.protected)
        if not live:
            return self._post(self.rng.choice(self.users))
        post_id = self.rng.choice(live)
        if self.rng.random() < 0.7:
            self.world.delete(post_id)
            return "delete"
        self.world.remove(post_id)
        return "remove"


# -- the moment a fault is injected at ---------------------------------------------------------


def delivered(world: World, post_id: str) -> int:
    """How many durable feeds hold ``post_id`` (a COUNT Scan: no items come back)."""
    request = {"TableName": TABLE, "Select": "COUNT",
               "FilterExpression": "begins_with(PK, :f) AND post_id = :p",
               "ExpressionAttributeValues": {":f": {"S": keys.FEED_PREFIX}, ":p": {"S": post_id}}}
    total = 0
    while True:
        page = world.dynamodb.scan(**request)
        total += page["Count"]
        if "LastEvaluatedKey" not in page:
            return total
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def holds(world: World, user: str, post_id: str) -> bool:
    """Whether ``user``'s durable feed has ``post_id``: one Query of that feed, cheap enough to
    poll (``delivered`` scans the whole table, ~0.3 s of moto's time a call)."""
    return bool(world.dynamodb.query(
        TableName=TABLE, KeyConditionExpression="PK = :pk", FilterExpression="post_id = :p",
        ExpressionAttributeValues={":pk": {"S": keys.feed_pk(user)}, ":p": {"S": post_id}},
    )["Items"])


def under_way(world: World, procs: Processes, fans: int, warm: int,
              first: Callable[[], None] = lambda: None) -> tuple[list[str], Crew]:
    """The history, ``first`` (say, a record to dead-letter), a slice of the app's traffic, the
    crew started, and the first big fan-out begun: the moment each fault is injected at.

    Begun: the first fan has it. A planner hands out its first page's followers in id order,
    so the first chunk written holds the first fan; polling ``delivered`` instead, a scan of the
    whole table four times a second, kept moto busy while the pipeline started."""
    fan_ids = build_history(world, fans=fans, warm=warm)
    first()
    steady_traffic(world, fan_ids)
    crew = Crew(procs)
    crew.start()
    wait_until(lambda: holds(world, fan_ids[0], "s1"), 90, "the first fan-out to start")
    return fan_ids, crew


def regen_jobs(users: list[str]) -> list[str]:
    """The app's regeneration jobs for users coming back: most as its follow path pushes them
    (cache rebuilds), every tenth asking for the durable feed's repair too."""
    return [json.dumps({"user_id": u, "action": "regenerate" if n % 10 == 0 else "follow", "target_user": u,
                        "timestamp": "2026-11-25T11:00:00.000Z"}) for n, u in enumerate(users)]


def write_post_without_author(world: World, post_id: str) -> None:
    """A post item the consumer cannot read: dead-lettered, never in a feed."""
    world.dynamodb.put_item(TableName="SocialMediaApp", Item={
        "PK": {"S": keys.post_pk(post_id)}, "SK": {"S": keys.POST_SK}, "post_id": {"S": post_id},
        "created_at": {"S": "2026-11-25T10:59:00.000Z"}, "content": {"S": "who wrote this?"},
    })


def dead_letters(world: World) -> dict[str, str]:
    """Every dead letter's id, with the post id its record names (reading every page)."""
    found = {}
    for page in world.stores.dead_letters.pages():
        for letter in page:
            payload = letter["payload"] if isinstance(letter["payload"], dict) else {}
            pk = payload.get("dynamodb", {}).get("Keys", {}).get("PK", {}).get("S", "")
            found[letter["id"]] = str(pk).removeprefix(keys.POST_PREFIX)
    return found
