"""``feedpipe up --demo``: drive the app's own write paths and show feeds filling.

The demo plays the app: users register, follow and unfollow, post and delete, exactly as the
seed writes them (transactions included). Active users "open the app" once they have a feed,
which builds their Redis cache from the durable feed; from then on fan-out keeps it warm.
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from feedpipe.adapters.dynamo import make_client
from feedpipe.adapters.redis_feeds import connect_redis
from feedpipe.config import Settings
from feedpipe.core.catalog import QUEUES
from feedpipe.dev.appsim import AppWriter
from feedpipe.feeds.rebuild import rebuild_cache
from feedpipe.services import build_stores

USERS = ("ana", "ben", "cleo", "dev", "eli", "fay", "gus", "hal")
ACTIVE = frozenset({"ana", "ben", "cleo", "dev"})
LINES = ("shipping day!", "coffee first", "new blog post is up", "who else is at the meetup?",
         "hot take: tabs", "look at this sunset", "release notes inside", "lunch?")


@dataclass
class Demo:
    settings: Settings
    app: AppWriter
    stores: Any
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    following: set[tuple[str, str]] = field(default_factory=set)
    live_posts: list[tuple[str, str]] = field(default_factory=list)  # (post_id, author)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("posts", "deleted", "follows", "unfollows"), 0))
    pace: float = 0.6

    @classmethod
    def start(cls, settings: Settings) -> Demo:
        dynamodb, redis = make_client("dynamodb"), connect_redis(settings)
        stores = build_stores(settings, dynamodb, redis=redis)
        demo = cls(settings, AppWriter(dynamodb, redis, settings.table_name), stores)
        for user in USERS:
            # A second run on the same backends finds its users there.
            with contextlib.suppress(dynamodb.exceptions.ConditionalCheckFailedException):
                demo.app.create_user(user, user)
        for follower in USERS:
            for followed in demo.rng.sample([u for u in USERS if u != follower], 3):
                demo._follow(follower, followed)
        return demo

    def step(self) -> None:
        """One app action, weighted as a busy feed sees them."""
        roll = self.rng.random()
        if roll < 0.6 or not self.live_posts:
            author = self.rng.choice(USERS)
            post_id, _ = self.app.create_post(author, author, f"{author}: {self.rng.choice(LINES)}")
            self.live_posts.append((post_id, author))
            self.counts["posts"] += 1
        elif roll < 0.7:
            post_id, _ = self.live_posts.pop(self.rng.randrange(len(self.live_posts)))
            self.app.delete_post(post_id)
            self.counts["deleted"] += 1
        elif roll < 0.85:
            follower, followed = self.rng.sample(USERS, 2)
            self._follow(follower, followed)
        elif self.following:
            follower, followed = self.rng.choice(sorted(self.following))
            self.app.unfollow(follower, followed)
            self.following.discard((follower, followed))
            self.counts["unfollows"] += 1
        self._open_app()

    def _follow(self, follower: str, followed: str) -> None:
        if (follower, followed) not in self.following:
            self.app.follow(follower, followed)
            self.following.add((follower, followed))
            self.counts["follows"] += 1

    def _open_app(self) -> None:
        """Active users without a cached feed open the app: their cache is built."""
        for user in ACTIVE:
            if not self.stores.cache.is_warm(user):
                rebuild_cache(self.stores, user)


class Dashboard:
    """A plain-text summary, printed every few seconds (readable in a terminal or a CI log)."""

    def __init__(self, settings: Settings, demo: Demo | None) -> None:
        self.settings = settings
        self.demo = demo
        self.redis = demo.app.redis if demo else connect_redis(settings)
        self.stores = demo.stores if demo else build_stores(settings, redis=self.redis)

    def render(self, elapsed: float) -> str:
        cache = self.stores.cache
        prefix = f"{self.settings.key_prefix}broker:"
        queued = sum(int(self.redis.llen(f"{prefix}{q}")) for q in QUEUES)
        lines = [
            f"-- feedpipe up  {int(elapsed // 60):02d}:{int(elapsed % 60):02d}  "
            f"tasks queued {queued}  dead letters {self.stores.dead_letters.count()}",
        ]
        if self.demo:
            c = self.demo.counts
            lines[0] += (f"  posts {c['posts']} (deleted {c['deleted']})  "
                         f"follows {c['follows']}  unfollows {c['unfollows']}")
            lines.append(f"   {'user':<6}{'durable':>8}{'cached':>8}  newest cached post")
            for user in USERS:
                durable = len(self.stores.table.feed_items(user))
                members = cache.members(user)
                empty = "(warm, empty)" if cache.is_warm(user) else "(cold)"
                newest = json.loads(members[0].member).get("contentPreview", "")[:50] if members else empty
                cached = str(len(members)) if members else "-"
                lines.append(f"   {user:<6}{durable:>8}{cached:>8}  {newest}")
        return "\n".join(lines)
