"""A model of GSI1's replication lag, which moto does not have (its GSIs are strongly consistent).

DynamoDB copies a write to a global secondary index asynchronously: a GSI1 read made less than
the lag after a write does not see it. feedpipe reads two things from GSI1, an author's
followers (fan-out and retraction walks) and an author's recent posts (follow backfills); every
other read is of the base table, strongly consistent. ``LaggingGsi`` wraps those two reads of a
``FeedTable`` so a follow edge or a post the test says was just written stays out of them until
the test's clock has moved ``lag`` seconds on. Tests run tasks by hand, so stream records that
arrive late and out of order are whatever order a test runs them in.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from feedpipe.adapters.dynamo import FeedTable
from feedpipe.core import keys
from feedpipe.core.events import Post


class LaggingGsi:
    def __init__(self, table: FeedTable, lag: float) -> None:
        self.table, self.lag, self.now = table, lag, 0.0
        self._shows_at: dict[tuple[str, str], float] = {}  # (GSI1PK, GSI1SK) -> when GSI1 shows it
        self._pages, self._posts = table.follower_pages_from, table.recent_posts
        table.follower_pages_from = self.follower_pages_from  # type: ignore[method-assign]
        table.recent_posts = self.recent_posts  # type: ignore[method-assign]

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def wrote_follow(self, follower_id: str, followed_id: str) -> None:
        self._wrote(keys.user_pk(followed_id), keys.follower_gsi1sk(follower_id))

    def wrote_post(self, post: Post) -> None:
        self._wrote(keys.user_pk(post.author_id), keys.post_gsi1sk(post.created_at, post.post_id))

    def _wrote(self, pk: str, sk: str) -> None:
        self._shows_at[(pk, sk)] = self.now + self.lag

    def _shown(self, pk: str, sk: str) -> bool:
        return self._shows_at.get((pk, sk), 0.0) <= self.now

    def follower_pages_from(self, author_id: str, *args: Any, **kwargs: Any) -> Iterator[tuple[list[str], Any]]:
        pk = keys.user_pk(author_id)
        for page, last in self._pages(author_id, *args, **kwargs):
            yield [f for f in page if self._shown(pk, keys.follower_gsi1sk(f))], last

    def recent_posts(self, author_id: str, limit: int, excluded: Collection[str]) -> list[Post]:
        pk = keys.user_pk(author_id)
        posts = self._posts(author_id, limit, excluded)
        return [p for p in posts if self._shown(pk, keys.post_gsi1sk(p.created_at, p.post_id))]
