"""``feedpipe audit``: a finished state audited clean, then every kind of corruption injected into
it, each one found, and repaired back to the finished state exactly. On the in-memory stores
(held to moto and fakeredis by ``test_store_contract``); on moto and fakeredis where the users
are found by a Scan of the table (``adapters.user_scan``).

The finished state is made by the feed rules themselves, in-process: follows backfilled, posts
fanned out, a delete retracted, the durable trim run, some caches warm. One reader follows an
author only after the author's first posts, so posts older than the backfill window are
legitimately absent from their feed: the audit must not call them missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

import feedpipe.services
from feedpipe.adapters.user_scan import all_users, sample_users
from feedpipe.config import load_settings
from feedpipe.core.events import Post
from feedpipe.core.records import post_from_image
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.audit import find_drift
from feedpipe.feeds.follows import apply_follow
from feedpipe.feeds.memory import memory_stores
from feedpipe.feeds.memory_cache import MemoryCache
from feedpipe.feeds.rebuild import rebuild_cache
from feedpipe.feeds.repair import audit_user, audit_users
from feedpipe.feeds.stores import Stores
from feedpipe.feeds.trimming import trim_durable_feed
from feedpipe.services import build_stores
from tests.adapters.conftest import APP_TABLE, publish, retract
from tests.memory_app import MemoryDynamo, MemoryFeedsRedis

MAX, BACKFILL, DURABLE_CAP = 4, 3, 8
AUTHORS = ("ann", "ben", "cat")
FOLLOWS = {"r1": ("ann", "ben"), "r2": ("cat",), "r3": ("ann", "ben", "cat"), "r4": ("ann",)}
WARM = ("r1", "r2", "r3")


class World:
    def __init__(self, stores: Stores, app: AppWriter, redis: fakeredis.FakeRedis | MemoryFeedsRedis) -> None:
        self.stores, self.app, self.redis = stores, app, redis
        self.clock = 0

    def post(self, author: str, post_id: str) -> Post:
        self.clock += 1
        self.app.create_post(author, author, f"text {post_id}", post_id=post_id,
                             created_at=f"2024-03-01T10:00:{self.clock:02d}.000Z")
        return self.image(post_id)

    def image(self, post_id: str) -> Post:
        image = self.stores.table.post_image(post_id)
        assert image is not None
        return post_from_image(image)

    def items(self, user: str) -> list[dict[str, Any]]:
        return self.stores.table.feed_items(user)

    def durable(self, user: str) -> list[str]:
        return [i["post_id"] for i in self.items(user)]

    def cached(self, user: str) -> list[tuple[str, int]]:
        return [(m.decode(), int(s)) for m, s in self.redis.zrevrange(f"feed:{user}", 0, -1, withscores=True)]

    def state(self) -> dict[str, Any]:
        """Everything a reader sees: durable items (every attribute but the write time) and cached
        members with scores, and whether each cached feed expires."""
        def item(i: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in i.items() if k not in ("inserted_at", "ttl")}

        return {u: ([item(i) for i in self.items(u)], self.cached(u), self.redis.ttl(f"feed:{u}") > 0)
                for u in FOLLOWS}

    def put_item(self, user: str, item: dict[str, Any], **changes: str) -> None:
        """Write a durable item for ``user`` copied from ``item`` (another user's, or their own)."""
        raw = {k: ({"S": v} if isinstance(v, str) else {"N": str(v)} if not isinstance(v, bool) else {"BOOL": v})
               for k, v in {**item, **changes}.items()}
        raw.update(PK={"S": f"FEED#{user}"}, GSI1PK={"S": f"FEED_MANAGEMENT#{user}"}, user_id={"S": user})
        self.app.dynamodb.put_item(TableName=APP_TABLE, Item=raw)

    def delete_item(self, user: str, sk: str) -> None:
        self.app.dynamodb.delete_item(TableName=APP_TABLE, Key={"PK": {"S": f"FEED#{user}"}, "SK": {"S": sk}})


def settings_env(**extra: str) -> dict[str, str]:
    return {
        "FEEDPIPE_TABLE_NAME": APP_TABLE, "FEEDPIPE_FEED_MAX_LENGTH": str(MAX),
        "FEEDPIPE_BACKFILL_POSTS": str(BACKFILL), "FEEDPIPE_DURABLE_FEED_MAX_ITEMS": str(DURABLE_CAP),
        "FEEDPIPE_WRITE_CONCURRENCY": "1", **{f"FEEDPIPE_{k.upper()}": v for k, v in extra.items()},
    }


def make_stores(monkeypatch: pytest.MonkeyPatch, dynamodb: Any, redis: fakeredis.FakeRedis, **extra: str) -> Stores:
    monkeypatch.setattr(feedpipe.services, "connect_redis", lambda url: redis)
    return build_stores(load_settings(settings_env(**extra)), dynamodb)


def finish(monkeypatch: pytest.MonkeyPatch, dynamodb: Any = None, **extra: str) -> World:
    """The finished state, on moto and fakeredis when ``dynamodb`` is given, else in memory."""
    if dynamodb is None:
        stores = memory_stores(load_settings(settings_env(**extra)))
        assert isinstance(stores.cache, MemoryCache)
        view = MemoryFeedsRedis(stores.cache, fakeredis.FakeRedis())
        w = World(stores, AppWriter(MemoryDynamo(stores.table), view, APP_TABLE, False), view)
    else:
        redis = fakeredis.FakeRedis()
        stores = make_stores(monkeypatch, dynamodb, redis, **extra)
        w = World(stores, AppWriter(dynamodb, redis, APP_TABLE, False), redis)
    for user in (*AUTHORS, *FOLLOWS):
        w.app.create_user(user)
    early = [w.post("cat", f"c{i}") for i in range(1, 5)]  # before r2 and r3 follow cat
    for post in early:
        publish(w.stores, post)
    for reader, authors in FOLLOWS.items():
        for author in authors:
            w.app.follow(reader, author)
            apply_follow(w.stores, reader, author)
    for i in range(1, 6):
        for author in AUTHORS:
            publish(w.stores, w.post(author, f"{author[0]}{i + 4}"))
        if i == 1:  # warm from here on (Redis keeps no empty feed), so fan-out writes the rest
            for reader in WARM:
                rebuild_cache(w.stores, reader)
    dead = w.image("b7")
    w.app.dynamodb.update_item(TableName=APP_TABLE, Key={"PK": {"S": "POST#b7"}, "SK": {"S": "METADATA"}},
                               UpdateExpression="SET is_deleted = :t", ExpressionAttributeValues={":t": {"BOOL": True}})
    retract(w.stores, dead)
    for reader in FOLLOWS:
        trim_durable_feed(w.stores.table, reader, DURABLE_CAP)
    return w


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return finish(monkeypatch)


@pytest.fixture
def moto_world(monkeypatch: pytest.MonkeyPatch, dynamodb: Any, tables: dict[str, str]) -> Iterator[World]:
    """The finished state on moto and fakeredis, for what scans the table for its users."""
    w = finish(monkeypatch, dynamodb)
    yield w
    w.stores.table.close()  # type: ignore[attr-defined]


def test_a_finished_state_has_no_drift(moto_world: World) -> None:
    world = moto_world
    assert "c1" not in world.durable("r2"), "older than the backfill window: legitimately absent"
    assert world.durable("r4") == ["a9", "a8", "a7", "a6", "a5"]
    summary = audit_users(world.stores, all_users(world.stores.table.client, APP_TABLE), repair=False)  # type: ignore[attr-defined]
    assert summary.users == len(AUTHORS) + len(FOLLOWS)
    assert summary.drifted == []


def test_every_kind_of_corruption_is_found_and_repaired(world: World) -> None:
    clean = world.state()
    injected = inject_everything(world)
    found = {user: {(d.kind, d.store, d.ref) for d in find_drift(world.stores, user)} for user in FOLLOWS}
    for user, wanted in injected.items():
        assert wanted <= found[user], f"{user}: not found {wanted - found[user]}"
    kinds = {(kind, store) for drifts in injected.values() for kind, store, _ in drifts}
    assert len(kinds) == 9, "every kind in both stores but the durable TTL (its own test)"

    results = [audit_user(world.stores, user, repair=True) for user in FOLLOWS]
    assert [r.left for r in results] == [[], [], [], []]
    assert world.state() == clean
    assert all(find_drift(world.stores, user) == [] for user in FOLLOWS)


def inject_everything(w: World) -> dict[str, set[tuple[str, str, str]]]:
    r1, r2, r3 = (w.items(u) for u in ("r1", "r2", "r3"))
    by_id = {i["post_id"]: i for i in r1 + r2 + r3}
    # r1: a required item removed, a bogus one added, members removed, foreign and bogus, no TTL.
    w.delete_item("r1", r1[0]["SK"])
    ghost = "2024-03-01T09:00:00.000Z"
    w.put_item("r1", by_id["a9"], SK=f"{ghost}#ghost", post_id="ghost", created_at=ghost)
    second, _ = w.cached("r1")[1]
    w.redis.zrem("feed:r1", second)
    foreign, score = w.cached("r2")[0]
    w.redis.zadd("feed:r1", {foreign: score, "not json": 1})
    w.redis.persist("feed:r1")
    # r2: a stale item and a stale member, an item from a feed of someone r2 does not follow.
    w.put_item("r2", by_id["c9"], author_username="renamed")
    member, score = w.cached("r2")[1]
    w.redis.zrem("feed:r2", member)
    loose = json.dumps(json.loads(member))  # same post, not canonical (spaces)
    w.redis.zadd("feed:r2", {loose: score})
    w.put_item("r2", by_id["a9"])
    # r3: both feeds over length with the right posts.
    for post_id in ("a5", "b5"):
        post = w.image(post_id)
        w.stores.table.put_items(w.stores.format.items(["r3"], post))
    older = [w.stores.format.entry(p) for p in (w.image(i) for i in ("b8", "a8"))]
    w.redis.zadd("feed:r3", {e.member: e.score_ms for e in older})
    return {
        "r1": {("missing", "dynamodb", r1[0]["post_id"]), ("extra", "dynamodb", "2024-03-01T09:00:00.000Z#ghost"),
               ("missing", "redis", json.loads(second)["postId"]), ("extra", "redis", foreign),
               ("extra", "redis", "not json"), ("missing_ttl", "redis", "ttl")},
        "r2": {("stale", "dynamodb", by_id["c9"]["SK"]), ("stale", "redis", loose),
               ("extra", "dynamodb", by_id["a9"]["SK"])},
        "r3": {("over_long", "dynamodb", f"{DURABLE_CAP + 2} items"), ("over_long", "redis", f"{MAX + 2} members")},
    }


def test_an_item_naming_the_wrong_author_is_taken_out_and_stays_out(world: World) -> None:
    """r1 follows ann, not cat; an item holds cat's post c9 but names ann. Its repair must not
    be undone by a settle that sees ann followed and c9 live (it was put back, cache too)."""
    items = {i["post_id"]: i for u in ("r2", "r3") for i in world.items(u)}
    world.put_item("r1", items["c9"], author_id="ann")

    report = audit_user(world.stores, "r1", repair=True)

    assert report.left == []
    assert "c9" not in {i["post_id"] for i in world.items("r1")}
    assert find_drift(world.stores, "r1") == []


def test_a_post_hidden_behind_the_pipelines_back_leaves_every_feed(world: World) -> None:
    world.app.dynamodb.update_item(
        TableName=APP_TABLE, Key={"PK": {"S": "POST#c9"}, "SK": {"S": "METADATA"}},
        UpdateExpression="SET visibility = :p", ExpressionAttributeValues={":p": {"S": "private"}},
    )
    summary = audit_users(world.stores, list(FOLLOWS), repair=True)
    found = {(u.user_id, d.kind, d.store) for u in summary.drifted for d in u.found}
    assert {("r2", "extra", "dynamodb"), ("r2", "extra", "redis"), ("r3", "extra", "dynamodb"),
            ("r3", "extra", "redis")} <= found
    assert not summary.unrepaired
    for user in FOLLOWS:
        assert "c9" not in world.durable(user)
        assert all(json.loads(m)["postId"] != "c9" for m, _ in world.cached(user))
        assert find_drift(world.stores, user) == []


def test_durable_items_without_their_ttl_are_found_and_rewritten(monkeypatch: pytest.MonkeyPatch) -> None:
    w = finish(monkeypatch, durable_feed_ttl_days="36500")
    assert all(find_drift(w.stores, user) == [] for user in FOLLOWS)
    item = w.items("r4")[1]
    w.app.dynamodb.update_item(TableName=APP_TABLE, Key={"PK": {"S": "FEED#r4"}, "SK": {"S": item["SK"]}},
                               UpdateExpression="REMOVE #t", ExpressionAttributeNames={"#t": "ttl"})
    assert [(d.kind, d.store, d.ref) for d in find_drift(w.stores, "r4")] == [("missing_ttl", "dynamodb", item["SK"])]
    assert audit_user(w.stores, "r4", repair=True).left == []
    assert all("ttl" in i for i in w.items("r4"))


def test_a_sample_is_a_few_distinct_users_of_the_table(moto_world: World) -> None:
    world = moto_world
    everyone = set(all_users(world.stores.table.client, APP_TABLE))
    picked = sample_users(world.stores.table.client, APP_TABLE, 3)
    assert len(picked) == 3 and len(set(picked)) == 3 and set(picked) <= everyone
    assert set(sample_users(world.stores.table.client, APP_TABLE, 100)) == everyone


def test_a_user_audited_without_repair_keeps_the_drift_and_says_so(world: World) -> None:
    world.redis.persist("feed:r1")
    result = audit_user(world.stores, "r1", repair=False)
    assert [(d.kind, d.store) for d in result.left] == [("missing_ttl", "redis")]
    assert world.redis.ttl("feed:r1") == -1


def test_huge_authors_posts_kept_out_of_feeds_are_not_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    w = finish(monkeypatch, fanout_on_read_followers="2")
    assert "a9" not in w.durable("r4"), "served by fan-out-on-read"
    assert all(find_drift(w.stores, user) == [] for user in FOLLOWS)


def test_the_sampled_audit_task_repairs_what_it_finds_and_counts_it(moto_world: World) -> None:
    world = moto_world  # the task samples its users by a Scan of the table
    from feedpipe import tasks
    from feedpipe.services import Services
    from feedpipe.worker import WorkerApp

    audit_sample = WorkerApp(services=Services(world.stores.settings, _stores=world.stores)).tasks[tasks.AUDIT_SAMPLE]
    metrics = world.stores.metrics
    before = (metrics.audit_users._value.get(), metrics.audit_repairs._value.get(),
              metrics.audit_drift_items.labels("missing_ttl", "redis")._value.get())
    world.redis.persist("feed:r1")

    outcome = audit_sample.run(len(AUTHORS) + len(FOLLOWS))

    assert outcome == {"audited": len(AUTHORS) + len(FOLLOWS), "drifted": ["r1"], "unrepaired": False}
    assert world.redis.ttl("feed:r1") > 0
    after = (metrics.audit_users._value.get(), metrics.audit_repairs._value.get(),
             metrics.audit_drift_items.labels("missing_ttl", "redis")._value.get())
    assert [a - b for a, b in zip(after, before, strict=True)] == [len(AUTHORS) + len(FOLLOWS), 1, 1]


def test_a_warm_feed_lost_while_its_marker_stays_is_found_and_rebuilt(world: World) -> None:
    clean = world.state()
    cache = world.stores.cache
    marker = cache.own_keys.warm_marker("r2")
    assert marker and world.redis.exists(marker), "rebuilt feeds are marked warm"
    world.redis.delete("feed:r2")
    world.redis.persist(marker)

    drift = {(d.kind, d.store) for d in find_drift(world.stores, "r2")}
    # An empty cache is what retractions may leave a warm user: missing members are not judged
    # (the marker without a TTL cannot date the cache's last write), the marker's TTL is.
    assert drift == {("missing_ttl", "redis")}
    assert audit_user(world.stores, "r2", repair=True).left == []
    assert world.state() == clean and world.redis.ttl(marker) > 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_warm_feed_its_retractions_emptied_is_right_and_a_post_fan_out_missed_since_is_found(
    world: World,
) -> None:
    """Retractions empty r1's cache (its newest posts deleted); the marker keeps r1 warm, the
    durable feed keeps older posts the cache never held: that is the rules' own state. A post
    that reaches only the durable feed afterwards is one fan-out should have cached."""
    marker = world.stores.cache.own_keys.warm_marker("r1")
    for post_id in [json.loads(m)["postId"] for m, _ in world.cached("r1")]:
        world.app.delete_post(post_id)
        retract(world.stores, world.image(post_id))
    assert world.cached("r1") == [] and marker and world.redis.ttl(marker) > 0
    assert world.durable("r1"), "older posts the cache never held"

    assert find_drift(world.stores, "r1") == []

    world.redis.expire(marker, world.stores.settings.feed_ttl_seconds - 60)  # a minute on, no write since
    world.app.create_post("ann", "ann", "late", post_id="late", created_at=_now())
    late = world.image("late")
    world.stores.table.put_items(world.stores.format.items(["r1"], late))
    assert [(d.kind, d.store, d.ref) for d in find_drift(world.stores, "r1")] == [("missing", "redis", "late")]
    assert audit_user(world.stores, "r1", repair=True).left == []
    assert [json.loads(m)["postId"] for m, _ in world.cached("r1")][0] == "late"


def test_with_item_expiry_a_post_only_the_cache_still_holds_is_not_missing_but_a_due_one_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Items expire a day after they were written: every post here is older than that, so an
    item of one that the cache still holds may have expired (DynamoDB's TTL delete); a post of
    today is due in the durable feed whatever the cache holds."""
    w = finish(monkeypatch, durable_feed_ttl_days="1")
    assert all(find_drift(w.stores, user) == [] for user in FOLLOWS)
    expired = w.items("r1")[0]
    assert expired["post_id"] in {json.loads(m)["postId"] for m, _ in w.cached("r1")}
    w.delete_item("r1", expired["SK"])

    assert find_drift(w.stores, "r1") == []

    w.app.create_post("ann", "ann", "today", post_id="today", created_at=_now())
    publish(w.stores, w.image("today"))
    today = next(i for i in w.items("r1") if i["post_id"] == "today")
    w.delete_item("r1", today["SK"])
    assert [(d.kind, d.store, d.ref) for d in find_drift(w.stores, "r1")] == [("missing", "dynamodb", "today")]
