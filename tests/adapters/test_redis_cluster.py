"""feedpipe's Redis side on a real three-primary Redis Cluster started by the test: every
FeedCache script, dead letters, the regeneration queue with its leases, the trim sweep and the
beat lock, with keys checked to land on every primary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis
from redis.cluster import RedisCluster

from feedpipe.adapters.redis_client import SCAN_START, check_redis, connect_redis, scan_page
from feedpipe.adapters.redis_feeds import FeedCache
from feedpipe.adapters.regen_queue import RegenQueue
from feedpipe.config import CLUSTER_NEEDS_BROKER, ConfigError, RedisClusterMode, Settings, load_settings
from feedpipe.core import keys
from feedpipe.core.entries import CacheEntry
from feedpipe.core.keys import REGEN_QUEUE, OwnKeys
from feedpipe.dev.local import LocalRedisCluster
from feedpipe.feeds.trimming import sweep_cached_feeds
from feedpipe.ops import active_users

BROKER = "redis://127.0.0.1:6379/15"  # never contacted: these tests publish nothing
USERS = [f"u{i:02d}" for i in range(30)]


def cluster_settings(cluster: LocalRedisCluster, **env: str) -> Settings:
    return load_settings({"FEEDPIPE_REDIS_URL": cluster.url, "FEEDPIPE_BROKER_URL": BROKER, **env})


@pytest.fixture
def client(cluster: LocalRedisCluster) -> Iterator[RedisCluster]:
    found = connect_redis(cluster_settings(cluster))
    assert isinstance(found, RedisCluster), "auto mode must detect the cluster"
    found.flushall()
    yield found
    found.flushall()
    found.close()


def primaries_of(client: RedisCluster, names: list[str]) -> set[str]:
    return {client.get_node_from_key(name).name for name in names}


def test_auto_mode_detects_a_cluster_and_refuses_it_as_the_broker(cluster: LocalRedisCluster) -> None:
    with pytest.raises(ConfigError) as no_broker:
        connect_redis(load_settings({"FEEDPIPE_REDIS_URL": cluster.url}))
    assert str(no_broker.value) == f"bad configuration: {CLUSTER_NEEDS_BROKER}"
    with pytest.raises(ConfigError, match="only database 0"):
        connect_redis(cluster_settings(cluster, FEEDPIPE_REDIS_URL=cluster.url.replace("/0", "/2")))
    with pytest.raises(ConfigError, match="is a Redis Cluster node; Celery needs a plain Redis"):
        check_redis(cluster_settings(cluster, FEEDPIPE_BROKER_URL=cluster.url), broker=True)
    plain = connect_redis(cluster_settings(cluster, FEEDPIPE_REDIS_CLUSTER="off"))
    assert not isinstance(plain, RedisCluster)
    plain.close()
    resolved = check_redis(cluster_settings(cluster), broker=False)  # what a process installs at start
    assert resolved.redis_cluster is RedisClusterMode.ON


def test_the_regen_queue_keys_share_its_slot_as_the_server_computes_it(client: RedisCluster) -> None:
    for own in (OwnKeys(), OwnKeys("app1:feedpipe:")):
        names = [REGEN_QUEUE, own.regen_processing("d1"), own.regen_processing("other"), own.regen_drains]
        assert {client.cluster_keyslot(name) for name in names} == {11166}


@pytest.mark.parametrize("own", [OwnKeys(), OwnKeys("app1:feedpipe:")], ids=["default", "prefixed"])
def test_warm_markers_share_their_feeds_slot_as_the_server_computes_it(client: RedisCluster, own: OwnKeys) -> None:
    for user in [*USERS, "a{b}", "a{b", "{u}"]:
        marker = own.warm_marker(user)
        assert marker is not None
        assert client.cluster_keyslot(marker) == client.cluster_keyslot(keys.feed_cache(user)), user


def test_empty_warm_feeds_are_written_on_every_primary(client: RedisCluster) -> None:
    cache = FeedCache(client, max_length=3, ttl_seconds=600)
    assert len(primaries_of(client, [keys.feed_cache(u) for u in USERS[:20]])) == 3
    for user in USERS[:20]:
        assert cache.replace_feed(user, []) == 0
    assert not any(client.exists(keys.feed_cache(u)) for u in USERS)
    assert cache.add_to_warm_feeds(USERS, CacheEntry(2000, json.dumps({"postId": "p2", "authorId": "b"}))) == 20
    assert cache.remove_post(USERS[:10], 2000, "p2") == 10  # emptied: still warm
    assert cache.add_many_if_warm(USERS[0], [CacheEntry(3000, json.dumps({"postId": "p3", "authorId": "b"}))])
    assert [json.loads(e.member)["postId"] for e in cache.members(USERS[0])] == ["p3"]
    assert [json.loads(e.member)["postId"] for e in cache.members(USERS[15])] == ["p2"]
    assert not any(client.exists(keys.feed_cache(u)) for u in USERS[20:]), "fan-out recreated a cold feed"
    assert active_users(SimpleNamespace(cache=cache)) == sorted(USERS[:20])  # type: ignore[arg-type]


def test_every_feed_cache_script_runs_on_every_primary(client: RedisCluster) -> None:
    cache = FeedCache(client, max_length=3, ttl_seconds=600)
    warm, cold = USERS[:20], USERS[20:]
    assert len(primaries_of(client, [keys.feed_cache(u) for u in warm])) == 3
    for user in warm:
        assert cache.replace_feed(user, [CacheEntry(1000, json.dumps({"postId": "old", "authorId": "a"}))]) == 1

    assert cache.add_to_warm_feeds(USERS, CacheEntry(2000, json.dumps({"postId": "p2", "authorId": "b"}))) == 20
    for user in warm[:5]:
        assert cache.add_many_if_warm(user, [CacheEntry(3000, json.dumps({"postId": "p3", "authorId": "b"})),
                                             CacheEntry(4000, json.dumps({"postId": "p4", "authorId": "c"}))])
    assert not cache.add_many_if_warm(cold[0], [CacheEntry(3000, json.dumps({"postId": "p3", "authorId": "b"}))])
    assert cache.remove_post(warm[10:], 2000, "p2") == 10
    assert cache.remove_author(warm[0], "b") == 2  # p2 and p3 ("old" left with the trim to 3)

    assert [json.loads(e.member)["postId"] for e in cache.members(warm[0])] == ["p4"]
    assert [json.loads(e.member)["postId"] for e in cache.members(warm[1])] == ["p4", "p3", "p2"]
    assert [json.loads(e.member)["postId"] for e in cache.members(warm[15])] == ["old"]
    assert not any(client.exists(keys.feed_cache(u)) for u in cold), "fan-out recreated a cold feed"
    assert 0 < client.ttl(keys.feed_cache(warm[1])) <= 600


def test_pipelined_scripts_survive_nodes_that_lost_them(client: RedisCluster) -> None:
    cache = FeedCache(client, max_length=5, ttl_seconds=600)
    for user in USERS:
        cache.replace_feed(user, [CacheEntry(1, json.dumps({"postId": "p1"}))])
    client.script_flush()  # as after a node restart or a failover to a fresh replica

    assert cache.add_to_warm_feeds(USERS, CacheEntry(2, json.dumps({"postId": "p2"}))) == len(USERS)
    client.script_flush()
    assert cache.remove_post(USERS, 1, "p1") == len(USERS)
    assert all([e.member for e in cache.members(u)] == ['{"postId": "p2"}'] for u in USERS)


def test_follow_caches_in_different_slots_are_both_dropped(client: RedisCluster) -> None:
    cache = FeedCache(client, max_length=5, ttl_seconds=600)
    pairs = [(f, a) for f in USERS[:10] for a in USERS[10:13]]
    for follower, followed in pairs:
        client.set(keys.followers_cache(followed), "x")
        client.set(keys.following_cache(follower), "x")
    for follower, followed in pairs:
        cache.drop_follow_caches(follower, followed)
    assert not client.keys("follow*")


def test_regen_queue_take_ack_and_recover_with_leases(client: RedisCluster) -> None:
    own = OwnKeys()
    client.lpush(REGEN_QUEUE, *[json.dumps({"user_id": f"u{i}", "action": "follow"}) for i in range(10)])
    live, dead = RegenQueue(client, own, lease_seconds=60), RegenQueue(client, own, lease_seconds=0)

    kept = live.open_drain()
    assert [json.loads(j)["user_id"] for j in live.take(kept, 3)] == ["u0", "u1", "u2"]  # oldest first
    stranded = dead.open_drain()  # its lease runs out at once: its worker "died"
    assert len(dead.take(stranded, 4)) == 4
    assert (live.depth(), live.processing_depth()) == (3, 7)

    assert live.recover_stranded() == 4  # the dead drain's jobs, not the live one's
    assert (live.depth(), live.processing_depth()) == (7, 3)
    live.finish(kept)
    retaken = live.open_drain()
    assert [json.loads(j)["user_id"] for j in live.take(retaken, 10)] == [f"u{i}" for i in range(3, 10)]
    live.finish(retaken)
    assert (live.depth(), live.processing_depth()) == (0, 0)
    assert not client.keys(f"{own.prefix}regen:*")


def test_the_trim_sweep_walks_every_primary(client: RedisCluster) -> None:
    names = [keys.feed_cache(f"t{i:03d}") for i in range(300)]
    for name in names:
        client.zadd(name, {f"m{j}": j for j in range(8)})
    client.set(keys.feed_cache("not-a-zset"), "the app's own string")
    assert len(primaries_of(client, names)) == 3

    stats = sweep_cached_feeds(FeedCache(client, max_length=5, ttl_seconds=600), max_length=5, scan_count=40)

    assert (stats.keys_seen, stats.keys_trimmed, stats.members_removed) == (300, 300, 900)
    assert stats.slices >= 3  # at least one SCAN per primary
    assert {client.zcard(name) for name in names} == {5}
    assert client.zrange(names[0], 0, -1) == [b"m3", b"m4", b"m5", b"m6", b"m7"]  # the newest kept
    assert client.get(keys.feed_cache("not-a-zset")) == b"the app's own string"


def test_scan_pages_cover_every_primary_and_a_stale_cursor_restarts(client: RedisCluster) -> None:
    names = {keys.feed_cache(u) for u in USERS}
    for name in names:
        client.zadd(name, {"m": 1})
    seen: list[bytes] = []
    cursor, pages = SCAN_START, 0
    while True:
        cursor, found = scan_page(client, cursor, "feed:*", 5, "zset")
        seen += found
        pages += 1
        if cursor == SCAN_START:
            break
    assert {n.decode() for n in seen} == names and len(seen) == len(names)
    _, first = scan_page(client, "7:99", "feed:*", 1000, "zset")  # a node index that no longer exists
    assert first, "a stale cursor restarts at the first primary"
    stores = SimpleNamespace(cache=FeedCache(client, 5, 600))
    assert active_users(stores) == sorted(USERS)  # type: ignore[arg-type]


def test_the_beat_lock_on_the_cluster(cluster: LocalRedisCluster) -> None:
    settings = cluster_settings(cluster)
    first, second = connect_redis(settings), connect_redis(settings)
    name = OwnKeys(settings.key_prefix).beat_lock
    holder = first.lock(name, timeout=5, thread_local=False)
    standby = second.lock(name, timeout=5, thread_local=False)
    try:
        assert holder.acquire(blocking=False)
        assert not standby.acquire(blocking=False)
        assert holder.reacquire()
        holder.release()
        assert standby.acquire(blocking=False)
        with pytest.raises(redis.exceptions.LockError):
            holder.reacquire()  # a beat that lost its lock learns it at once
    finally:
        first.delete(name)
        first.close()
        second.close()
