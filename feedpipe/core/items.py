"""Durable feed items in DynamoDB's wire format, built without boto3 (the hot path of fan-out)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from feedpipe.core import keys
from feedpipe.core.events import Post

Item = dict[str, dict[str, Any]]
Key = dict[str, dict[str, str]]

WRITE_BATCH_LIMIT = 25  # BatchWriteItem's hard limit per call
FEED_RANK = "1"


def feed_item_key(user_id: str, post: Post) -> Key:
    return {"PK": {"S": keys.feed_pk(user_id)}, "SK": {"S": keys.feed_sk(post.created_at, post.post_id)}}


def feed_item_template(post: Post, inserted_at: str, ttl: int | None = None) -> Item:
    """The attributes shared by every follower's copy of one post."""
    item: Item = {
        "GSI1SK": {"S": post.created_at},
        "post_id": {"S": post.post_id},
        "author_id": {"S": post.author_id},
        "author_username": {"S": post.author_username},
        "content_preview": {"S": post.content_preview},
        "content_type": {"S": post.content_type},
        "created_at": {"S": post.created_at},
        "inserted_at": {"S": inserted_at},
        "engagement_score": {"N": str(post.engagement_score)},
        "is_promoted": {"BOOL": post.is_promoted},
        "feed_rank": {"N": FEED_RANK},
    }
    if ttl is not None:
        item["ttl"] = {"N": str(ttl)}
    return item


def feed_items(user_ids: Iterable[str], post: Post, template: Item) -> Iterator[Item]:
    sk = {"S": keys.feed_sk(post.created_at, post.post_id)}
    for user_id in user_ids:
        yield {
            "PK": {"S": keys.feed_pk(user_id)},
            "SK": sk,
            "GSI1PK": {"S": keys.feed_gsi1pk(user_id)},
            "user_id": {"S": user_id},
            **template,
        }
