"""Every DynamoDB and Redis key feedpipe reads or writes, built in one place.

DynamoDB table ``SocialMediaApp`` (name is a setting), as the app writes it::

    entity     PK                     SK                        GSI1PK                      GSI1SK
    user       USER#{user_id}         PROFILE                   USERNAME#{username}         PROFILE
    post       POST#{post_id}         METADATA                  USER#{author_id}            POST#{created_at}#{post_id}
    follow     USER#{follower_id}     FOLLOWING#{followed_id}   USER#{followed_id}          FOLLOWER#{follower_id}
    feed item  FEED#{user_id}         {created_at}#{post_id}    FEED_MANAGEMENT#{user_id}   {created_at}
    huge acct  FANOUT_ON_READ         AUTHOR#{author_id}        -                           -

Feed items and huge-author entries (the durable list of authors served by fan-out-on-read,
written only when it is on) are feedpipe's; the rest is the app's and only read.

DynamoDB lease table (name is a setting), feedpipe's own::

    lease_key = {stream_id}|{shard_id}    checkpoint, owner, counter, parent_shard_ids
    lease_key = backfill|{total}|{segment}  one segment of ``feedpipe backfill``'s parallel Scan:
                                            resume_key (where its Scan goes on), users, done

DynamoDB dead-letter table (name is a setting), feedpipe's own; one partition per store (the
key prefix names it, so deployments may share a table)::

    store          letter                   attributes
    {prefix}dlq    LETTER#{at}#{letter_id}  id, at, source, reason, payload (JSON text), truncated,
                                            original_bytes, sha256, replay_reason
    {prefix}dlq    COUNT                    count: letters stored (the bound is checked on it)

Redis, as the app reads it (no prefix: the app owns these names)::

    feed:{user_id}          sorted set, score = created_at in epoch ms, member = canonical JSON
    feed_regen_queue        list, the app LPUSHes regeneration jobs
    followers:{user_id}     app cache, feedpipe only deletes it
    following:{user_id}     app cache, feedpipe only deletes it

Redis, feedpipe's own, all under one prefix (default ``feedpipe:``, no braces in it)::

    {prefix}regen:{rq49450}:processing:{drain}    list: regen jobs a drain has taken and not finished
    {prefix}regen:{rq49450}:drains                zset: drain id -> lease deadline (epoch seconds)
    {prefix}beat:lock                             string: the one beat allowed to schedule
    {prefix}trim:durable:cursor                   string: where the durable trim sweep resumes
    {prefix}rebuild:active:cursor                 string: where the scheduled cache rebuild resumes
    {prefix}broker:*                              Celery's queues (kombu ``global_keyprefix``)
    {prefix}huge_authors                          set: authors served by fan-out-on-read (cache of
                                                  the FANOUT_ON_READ items, plus one "" member)
    {prefix}author_posts:{author_id}              sorted set, as feed:{user_id}: a huge author's
                                                  newest posts, which readers merge
    {prefix}warm:{feed:{user_id}}                 string "1": the user is warm (fan-out writes their
                                                  feed) even while it is empty; TTL as the feed's
    {prefix}write_budget:*                        the shared write budget's counters (``limits``'
                                                  sliding window, keys of its own after the colon)
    {prefix}follower_reads:*                      the follower walks' read pace, a counter per author
                                                  (``limits``' sliding window, as write_budget)

The warm marker's braces hold the whole feed key, so it hashes to ``feed:{user_id}``'s cluster
slot and one script can test and write both. An id whose feed key has a hash tag of its own
(``feed:a{b}``) gets that tag and the feed key after it (``{prefix}warm:{b}feed:a{b}``), unique
and in the same slot; an id no tag can place there (the hashed part holds a ``}``) has none,
and is warm only while its feed key exists.

``{rq49450}`` is a cluster hash tag chosen to hash to ``feed_regen_queue``'s slot (11166), so
LMOVE between the queue and a processing list stays in one slot on a Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

# DynamoDB key prefixes and fixed sort keys.
USER_PREFIX = "USER#"
POST_PREFIX = "POST#"
FEED_PREFIX = "FEED#"
FOLLOWING_PREFIX = "FOLLOWING#"
FOLLOWER_PREFIX = "FOLLOWER#"
USERNAME_PREFIX = "USERNAME#"
FEED_MANAGEMENT_PREFIX = "FEED_MANAGEMENT#"
TIMELINE_PREFIX = "TIMELINE#"
FANOUT_ON_READ_PK = "FANOUT_ON_READ"
AUTHOR_PREFIX = "AUTHOR#"

# The cursor that starts a walk of the cache's keys (Redis SCAN's own), and that the walk's last
# page returns.
WALK_START = "0"
BACKFILL_PREFIX = "backfill|"
PROFILE_SK = "PROFILE"
POST_SK = "METADATA"
GSI1 = "GSI1"
GSI2 = "GSI2"
GSI3 = "GSI3"

# Redis names the app reads; fixed by the contract, never prefixed.
FEED_CACHE_PREFIX = "feed:"
REGEN_QUEUE = "feed_regen_queue"
FOLLOWERS_CACHE_PREFIX = "followers:"
FOLLOWING_CACHE_PREFIX = "following:"

DEFAULT_PREFIX = "feedpipe:"
REGEN_SLOT_TAG = "{rq49450}"  # same cluster slot as REGEN_QUEUE; a test pins it


def user_pk(user_id: str) -> str:
    return f"{USER_PREFIX}{user_id}"


def post_pk(post_id: str) -> str:
    return f"{POST_PREFIX}{post_id}"


def feed_pk(user_id: str) -> str:
    return f"{FEED_PREFIX}{user_id}"


def feed_sk(created_at: str, post_id: str) -> str:
    return f"{created_at}#{post_id}"


def feed_gsi1pk(user_id: str) -> str:
    return f"{FEED_MANAGEMENT_PREFIX}{user_id}"


def following_sk(followed_id: str) -> str:
    return f"{FOLLOWING_PREFIX}{followed_id}"


def follower_gsi1sk(follower_id: str) -> str:
    return f"{FOLLOWER_PREFIX}{follower_id}"


def follower_range_gsi1sk(follower_id: str | None) -> str:
    """The GSI1SK bound of a segment of followers at ``follower_id``; None is past every
    follower (``FOLLOWER$``: ``$`` is the character after ``#``)."""
    return follower_gsi1sk(follower_id) if follower_id is not None else FOLLOWER_PREFIX[:-1] + "$"


def post_gsi1sk(created_at: str, post_id: str) -> str:
    return f"{POST_PREFIX}{created_at}#{post_id}"


def timeline_gsi2pk(date: str) -> str:
    return f"{TIMELINE_PREFIX}{date}"


def username_gsi1pk(username: str) -> str:
    return f"{USERNAME_PREFIX}{username}"


def huge_author_sk(author_id: str) -> str:
    return f"{AUTHOR_PREFIX}{author_id}"


def strip_prefix(value: str, prefix: str) -> str | None:
    """The id after ``prefix``, or None when ``value`` does not start with it or the id is empty."""
    if not value.startswith(prefix) or len(value) == len(prefix):
        return None
    return value[len(prefix) :]


def lease_key(stream_id: str, shard_id: str) -> str:
    return f"{stream_id}|{shard_id}"


def backfill_key(total_segments: int, segment: int) -> str:
    """A backfill segment's progress item in the lease table (never a stream's: no ``|`` in a
    stream ARN or name comes first as ``backfill``)."""
    return f"{BACKFILL_PREFIX}{total_segments}|{segment}"


LETTER_PREFIX = "LETTER#"
LETTER_COUNT_SK = "COUNT"


def letter_sk(at: str, letter_id: str) -> str:
    """Sorts by time: a Query reads a store's letters oldest first (or newest first)."""
    return f"{LETTER_PREFIX}{at}#{letter_id}"


def letters_until(at: str) -> str:
    """The highest letter key of time ``at``: ids are hex, and "~" sorts after every hex digit."""
    return f"{LETTER_PREFIX}{at}#~"


def feed_cache(user_id: str) -> str:
    return f"{FEED_CACHE_PREFIX}{user_id}"


def hashed_part(key: str) -> str:
    """What Redis Cluster hashes to place ``key``: the first ``{...}`` with something in it, else all."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def followers_cache(user_id: str) -> str:
    return f"{FOLLOWERS_CACHE_PREFIX}{user_id}"


def following_cache(user_id: str) -> str:
    return f"{FOLLOWING_CACHE_PREFIX}{user_id}"


@dataclass(frozen=True, slots=True)
class OwnKeys:
    """Keys feedpipe adds for itself, all under one configurable prefix (Redis keys, and the
    dead-letter store's partition)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dlq"

    def regen_processing(self, drain_id: str) -> str:
        return f"{self.prefix}regen:{REGEN_SLOT_TAG}:processing:{drain_id}"

    @property
    def regen_drains(self) -> str:
        return f"{self.prefix}regen:{REGEN_SLOT_TAG}:drains"

    @property
    def beat_lock(self) -> str:
        return f"{self.prefix}beat:lock"

    @property
    def durable_trim_cursor(self) -> str:
        return f"{self.prefix}trim:durable:cursor"

    @property
    def active_rebuild_cursor(self) -> str:
        return f"{self.prefix}rebuild:active:cursor"

    @property
    def broker_prefix(self) -> str:
        return f"{self.prefix}broker:"

    @property
    def write_budget(self) -> str:
        """The prefix ``limits`` puts (with a colon) before the write budget's counter keys."""
        return f"{self.prefix}write_budget"

    @property
    def follower_reads(self) -> str:
        """The prefix ``limits`` puts (with a colon) before the follower walks' read-pace counters."""
        return f"{self.prefix}follower_reads"

    @property
    def huge_authors(self) -> str:
        return f"{self.prefix}huge_authors"

    def author_posts(self, author_id: str) -> str:
        return f"{self.prefix}author_posts:{author_id}"

    @property
    def warm_marker_prefix(self) -> str:
        return f"{self.prefix}warm:"

    def warm_marker(self, user_id: str) -> str | None:
        """The key keeping ``user_id`` warm, in ``feed:{user_id}``'s slot; None when no key can be."""
        feed = feed_cache(user_id)
        tag = hashed_part(feed)
        if "}" in tag:
            return None
        return f"{self.warm_marker_prefix}{{{tag}}}{'' if tag == feed else feed}"

    def user_of_warm_marker(self, name: str) -> str | None:
        """The user a warm marker keeps warm, or None for a key that is not one."""
        rest = strip_prefix(name, self.warm_marker_prefix + "{")
        tag, closed, feed = (rest or "").partition("}")
        user_id = strip_prefix(feed or tag, FEED_CACHE_PREFIX) if closed else None
        return user_id if user_id is not None and self.warm_marker(user_id) == name else None
