"""A deleted post, a late fan-out chunk, an unfollow and a re-follow, in every order (contract
section 2: a deleted post ends in no feed, and every live post is in each current follower's
feed, whatever order tasks run in).

The history, as the app writes it: ``wendy`` follows ``alice`` (before the test), whose older
live post ``q1`` is in wendy's feed, durable and cached, beside zoe's ``z_old``; then the app

1. ``post``: alice publishes ``p1``;
2. ``delete``: deletes it;
3. ``unfollow``: wendy unfollows alice;
4. ``refollow``: and follows her again.

Those records cause four tasks, each of which may run at any point after its record: p1's
fan-out ``chunk`` listing wendy (its planner walked while she followed; the chunk was queued
behind others), p1's ``retract``ion, the unfollow's ``unmerge`` and the re-follow's
``backfill``. The chunk is two steps, its write and its settle ``check``, with any of the app's
writes between them (put there by wrapping the chunk's first BatchWriteItem, as in
``test_races``; the tasks themselves run whole, one after another). Every one of the 176
schedules is run, grouped by the order the four tasks run in (24 orders); each schedule starts
from empty stores: the in-memory ones (``feeds.memory``), which ``test_store_contract`` holds to
the real adapters' behaviour.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from feedpipe.config import Settings, load_settings
from feedpipe.core.events import Post
from feedpipe.core.records import post_from_image
from feedpipe.feeds.fanout import deliver_chunk
from feedpipe.feeds.follows import apply_follow, apply_unfollow
from feedpipe.feeds.memory import MemoryTable, memory_stores
from feedpipe.feeds.memory_cache import MemoryCache
from feedpipe.feeds.stores import Stores
from tests.adapters.conftest import APP_TABLE, AppWrites, retract
from tests.memory_app import MemoryDynamo

AUTHOR, USER, P = "alice", "wendy", "p1"
AT = "2024-01-15T09:00:00.000Z"
WRITES = ("post", "delete", "unfollow", "refollow")
TASKS = ("chunk", "retract", "unmerge", "backfill")
CAUSE = {"delete": "post", "unfollow": "delete", "refollow": "unfollow",
         "chunk": "post", "retract": "delete", "unmerge": "unfollow", "backfill": "refollow", "check": "chunk"}

Schedule = tuple[str, ...]


def schedules() -> Iterator[Schedule]:
    """Every order of the writes, the tasks and the chunk's check in which each comes after
    what causes it and no task starts inside the chunk."""

    def extend(done: Schedule) -> Iterator[Schedule]:
        left = [s for s in (*WRITES, *TASKS, "check") if s not in done]
        if not left:
            yield done
        inside_chunk = "chunk" in done and "check" not in done
        for step in left:
            if inside_chunk and step in TASKS:
                continue
            if CAUSE.get(step, step) == step or CAUSE[step] in done:
                yield from extend((*done, step))

    return extend(())


def write(client: MemoryDynamo, items: list[dict[str, Any]]) -> None:
    requests = [{"PutRequest": {"Item": item}} for item in items]
    client.batch_write_item(RequestItems={APP_TABLE: requests})


def task_order(schedule: Schedule) -> Schedule:
    return tuple(s for s in schedule if s in TASKS)


ALL = list(schedules())
ORDERS = list(itertools.permutations(TASKS))


class Race:
    """One run of the history under one schedule, with ids of its own."""

    def __init__(self, stores: Stores) -> None:
        assert isinstance(stores.table, MemoryTable) and isinstance(stores.cache, MemoryCache)
        self.client = MemoryDynamo(stores.table)
        self.stores, self.app, self.redis = stores, AppWrites(self.client), stores.cache.space
        self.q, self.old = self.new_post("q1", "10:00:00"), self.new_post("z_old", "09:00:00", author="zoe")
        write(self.client, [self.app.follow_item(USER, AUTHOR, AT), self.app.follow_item(USER, "zoe", AT)])
        stores.table.put_items(
            item for post in (self.q, self.old) for item in stores.format.items([USER], post)
        )
        stores.cache.replace_feed(USER, [stores.format.entry(p) for p in (self.q, self.old)])
        self.p: Post | None = None

    def new_post(self, post_id: str, time: str, author: str = AUTHOR) -> Post:
        self.app.post(post_id, author, f"2024-03-01T{time}.000Z")
        image = self.stores.table.post_image(post_id)
        assert image is not None
        return post_from_image(image)

    def run(self, schedule: Schedule) -> None:
        steps = list(schedule)
        while steps:
            step = steps.pop(0)
            if step == "chunk":
                between = steps[: steps.index("check")]
                del steps[: len(between) + 1]
                self.chunk(between)
            else:
                self.step(step)

    def step(self, step: str) -> None:
        client = self.client
        edge = {"PK": {"S": f"USER#{USER}"}, "SK": {"S": f"FOLLOWING#{AUTHOR}"}}
        if step == "post":
            self.p = self.new_post(P, "10:00:01")
        elif step == "delete":
            client.update_item(TableName=APP_TABLE, Key={"PK": {"S": f"POST#{P}"}, "SK": {"S": "METADATA"}},
                               UpdateExpression="SET is_deleted = :t", ExpressionAttributeValues={":t": {"BOOL": True}})
        elif step == "unfollow":
            client.delete_item(TableName=APP_TABLE, Key=edge)
        elif step == "refollow":
            write(self.client, [self.app.follow_item(USER, AUTHOR, AT)])
        elif step == "retract":
            retract(self.stores, self.post)
        elif step == "unmerge":
            apply_unfollow(self.stores, USER, AUTHOR)
        elif step == "backfill":
            apply_follow(self.stores, USER, AUTHOR)

    def chunk(self, between: list[str]) -> None:
        """The chunk's write, then ``between``, then the rest of the chunk (its settle)."""
        table = self.stores.table
        real = table.put_items
        calls = [0]

        def write_then_interleave(items: Any) -> int:
            written = real(items)
            calls[0] += 1
            if calls[0] == 1:  # the chunk's own write; later calls are the steps' or the settle's
                for step in between:
                    self.step(step)
            return written

        table.put_items = write_then_interleave  # type: ignore[method-assign]
        try:
            deliver_chunk(self.stores, self.post, [USER])
        finally:
            del table.put_items
        assert calls[0] >= 1

    @property
    def post(self) -> Post:
        assert self.p is not None
        return self.p

    def outcome(self) -> tuple[list[str], list[str] | None]:
        """``USER``'s durable and cached feeds (post ids, newest first; None: no cached feed)."""
        durable = [item["post_id"] for item in self.stores.table.feed_items(USER)]
        key = f"feed:{USER}"
        if not self.redis.exists(key):
            return durable, None
        return durable, [json.loads(e.member)["postId"] for e in self.stores.cache.members(USER)]


@pytest.fixture
def settings() -> Settings:
    return load_settings({"FEEDPIPE_TABLE_NAME": APP_TABLE, "FEEDPIPE_WRITE_CONCURRENCY": "1"})


def test_every_schedule_is_counted_once() -> None:
    assert len(ALL) == len(set(ALL)) == 176
    assert {task_order(s) for s in ALL} == set(ORDERS)


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_deleted_post_ends_in_no_feed_and_the_live_one_stays(settings: Settings, order: Schedule) -> None:
    wrong = {}
    for schedule in (s for s in ALL if task_order(s) == order):
        race = Race(memory_stores(settings))
        race.run(schedule)
        kept = [race.q.post_id, race.old.post_id]
        if race.outcome() != (kept, kept):
            wrong[" ".join(schedule)] = race.outcome()
    assert not wrong, f"{len(wrong)} schedules end wrong: {json.dumps(wrong, indent=1)[:3000]}"
