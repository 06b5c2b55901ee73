"""Auditing users and repairing what the audit finds, through the feed rules themselves.

Every repair is a step the stream's own tasks take (``unmerge`` an author no longer followed,
take out a dead post, add a due one, each then settled against the table; the durable trim;
the cache rebuild), so a repair racing live traffic ends where that traffic would have left the
feed. A repaired user is audited again, and what is still there is reported as unrepaired.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from feedpipe.core import keys
from feedpipe.core.events import Post
from feedpipe.feeds.audit import CACHED, DURABLE, EXTRA, KINDS, OVER_LONG, STORES, Drift, find_drift
from feedpipe.feeds.follows import add_posts, settle_follow, unmerge
from feedpipe.feeds.rebuild import rebuild_cache
from feedpipe.feeds.stores import Stores
from feedpipe.feeds.trimming import trim_durable_feed

REPAIR_ROUNDS = 2  # a durable repair can leave the cache to mend in a second round


@dataclass
class UserAudit:
    user_id: str
    found: list[Drift]
    left: list[Drift]  # still there at the end: everything found, when not repairing
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "found": [d.as_dict() for d in self.found],
            "unrepaired": [d.as_dict() for d in self.left],
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class AuditSummary:
    users: int = 0
    drifted: list[UserAudit] = field(default_factory=list)

    def counts(self, which: str = "found") -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for user in self.drifted:
            for drift in getattr(user, which):
                totals[(drift.kind, drift.store)] += drift.count
        return dict(totals)

    @property
    def unrepaired(self) -> bool:
        return any(u.left or u.error for u in self.drifted)


def audit_users(
    stores: Stores, users: Iterable[str], repair: bool, progress: Callable[[str], None] = lambda _: None
) -> AuditSummary:
    """Audit (and repair) each user; one user's failure is reported, not raised."""
    summary = AuditSummary()
    for user in users:
        try:
            result = audit_user(stores, user, repair)
        except Exception as exc:  # an operator's sweep goes on past one bad user
            result = UserAudit(user, [], [], f"{type(exc).__name__}: {exc}")
        summary.users += 1
        if result.found or result.error:
            summary.drifted.append(result)
        progress(user)
    return summary


def audit_user(stores: Stores, user_id: str, repair: bool) -> UserAudit:
    found = find_drift(stores, user_id)
    metrics = stores.metrics
    metrics.audit_users.inc()
    for drift in found:
        metrics.audit_drift_items.labels(drift.kind, drift.store).inc(drift.count)
    left = found
    for _ in range(REPAIR_ROUNDS if repair and found else 0):
        repair_drift(stores, user_id, left)
        left = find_drift(stores, user_id)
        if not left:
            break
    metrics.audit_repairs.inc(max(0, _total(found) - _total(left)) if repair else 0)
    return UserAudit(user_id, found, left)


def repair_drift(stores: Stores, user_id: str, drift: list[Drift]) -> None:
    durable = [d for d in drift if d.store == DURABLE]
    _remove_extras(stores, user_id, [d for d in durable if d.kind == EXTRA])
    _put_due(stores, user_id, [d for d in durable if d.kind not in (EXTRA, OVER_LONG)])
    if any(d.kind == OVER_LONG for d in durable):
        trim_durable_feed(stores.table, user_id, stores.settings.durable_feed_max_items)
    if any(d.store == CACHED for d in drift):
        rebuild_cache(stores, user_id, keep_ttl=True)


def _remove_extras(stores: Stores, user_id: str, extras: list[Drift]) -> None:
    followees = set(stores.table.followees(user_id))
    by_author: dict[str, list[Post]] = defaultdict(list)
    unfollowed = sorted({d.post.author_id for d in extras if d.post is not None} - followees)
    for author in unfollowed:
        unmerge(stores, user_id, author)  # every post of theirs, cache too
    for drift in extras:
        if drift.post is not None and drift.post.author_id in unfollowed:
            continue
        if drift.key:
            stores.table.delete_keys([drift.key])
        if drift.post is not None:
            stores.cache.remove_entries([(user_id, drift.post.created_at_ms, drift.post.post_id)])
            by_author[drift.post.author_id].append(drift.post)
    # Settle each removal as its follow rule would, but only under the post's real author: an
    # item naming another author (a bug, an operator) would be put back by a settle that sees
    # the named author followed and the post live.
    real = stores.table.post_images(p.post_id for posts in by_author.values() for p in posts)
    for author, posts in by_author.items():
        named_right = [p for p in posts if real.get(p.post_id, {}).get("author_id", author) == author]
        settle_follow(stores, user_id, author, present=[], absent=named_right)


def _put_due(stores: Stores, user_id: str, due: list[Drift]) -> None:
    """Missing, stale and TTL-less items written as fan-out writes them (a stale item under
    another key taken out first), then settled."""
    moved = [d.key for d in due if d.key and d.post and d.key["SK"]["S"] != _sk(d.post)]
    stores.table.delete_keys(moved)
    by_author: dict[str, dict[str, Post]] = defaultdict(dict)
    for drift in due:
        if drift.post is not None:
            by_author[drift.post.author_id][drift.post.post_id] = drift.post
    for author, posts in by_author.items():
        add_posts(stores, user_id, sorted(posts.values(), key=lambda p: p.created_at_ms, reverse=True))
        settle_follow(stores, user_id, author, present=list(posts.values()), absent=[])


def _sk(post: Post | None) -> str:
    return "" if post is None else keys.feed_sk(post.created_at, post.post_id)


def _total(drift: list[Drift]) -> int:
    return sum(d.count for d in drift)


__all__ = ["KINDS", "STORES", "AuditSummary", "UserAudit", "audit_user", "audit_users", "repair_drift"]
