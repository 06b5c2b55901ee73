"""The app's own write paths, written as the seed writes them, for ``up --demo`` and the tests.

``transactional=False`` applies each transaction's parts as separate writes: the stream sees
the same records, and moto's TransactWriteItems (which copies every table it names on each
call) stops dominating the set-up of big graphs.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.types import TypeSerializer

from feedpipe.core import keys
from feedpipe.core.timestamps import now_timestamp

_serializer = TypeSerializer()
_sequence = itertools.count()


def iso_now() -> str:
    """``new Date().toISOString()``."""
    return now_timestamp()


def _typed(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in item.items()}


class AppWriter:
    def __init__(self, dynamodb: Any, redis: Any, table: str, transactional: bool = True) -> None:
        self.dynamodb = dynamodb
        self.redis = redis
        self.table = table
        self.transactional = transactional

    def create_user(self, user_id: str, username: str | None = None) -> None:
        username = username or f"user_{user_id}"
        now = iso_now()
        item = {
            "PK": keys.user_pk(user_id), "SK": keys.PROFILE_SK,
            "GSI1PK": keys.username_gsi1pk(username), "GSI1SK": keys.PROFILE_SK,
            "user_id": user_id, "username": username, "email": f"{username}@example.com",
            "display_name": username, "bio": "", "profile_image_url": "",
            "created_at": now, "updated_at": now, "followers_count": 0, "following_count": 0,
            "posts_count": 0, "is_verified": False, "is_private": False, "status": "active",
        }
        self.dynamodb.put_item(
            TableName=self.table, Item=_typed(item), ConditionExpression="attribute_not_exists(PK)"
        )

    def create_post(
        self, user_id: str, username: str, content: str, *, content_type: str = "text",
        post_id: str | None = None, created_at: str | None = None, visibility: str = "public",
    ) -> tuple[str, str]:
        timestamp = created_at or iso_now()
        post_id = post_id or f"post_{int(datetime.now(UTC).timestamp() * 1000)}{next(_sequence)}_{user_id}"
        post = {
            "PK": keys.post_pk(post_id), "SK": keys.POST_SK,
            "GSI1PK": keys.user_pk(user_id), "GSI1SK": keys.post_gsi1sk(timestamp, post_id),
            "GSI2PK": keys.timeline_gsi2pk(timestamp.split("T")[0]), "GSI2SK": f"{timestamp}#{post_id}",
            "post_id": post_id, "author_id": user_id, "author_username": username,
            "content": content, "content_type": content_type, "media_urls": [],
            "created_at": timestamp, "updated_at": timestamp, "likes_count": 0,
            "comments_count": 0, "shares_count": 0, "engagement_score": 0,
            "visibility": visibility, "is_deleted": False, "hashtags": [], "mentions": [],
        }
        count = self._counter_update(user_id, "ADD posts_count :inc SET updated_at = :ts", 1, timestamp)
        self._write([{"Put": {"TableName": self.table, "Item": _typed(post)}}, count])
        return post_id, timestamp

    def follow(self, follower_id: str, followed_id: str) -> None:
        timestamp = iso_now()
        edge = {
            "PK": keys.user_pk(follower_id), "SK": keys.following_sk(followed_id),
            "GSI1PK": keys.user_pk(followed_id), "GSI1SK": keys.follower_gsi1sk(follower_id),
            "GSI2PK": "FOLLOW_GRAPH", "GSI2SK": f"{timestamp}#{follower_id}#{followed_id}",
            "follower_id": follower_id, "followed_id": followed_id,
            "follower_username": f"user_{follower_id}", "followed_username": f"user_{followed_id}",
            "created_at": timestamp, "status": "active", "notification_enabled": True,
        }
        put = {"Put": {"TableName": self.table, "Item": _typed(edge),
                       "ConditionExpression": "attribute_not_exists(PK)"}}
        self._write([
            put,
            self._counter_update(follower_id, "ADD following_count :inc", 1),
            self._counter_update(followed_id, "ADD followers_count :inc", 1),
        ])
        self.redis.delete(keys.followers_cache(followed_id), keys.following_cache(follower_id))
        job = {"user_id": follower_id, "action": "follow", "target_user": followed_id, "timestamp": timestamp}
        self.redis.lpush(keys.REGEN_QUEUE, json.dumps(job))

    def unfollow(self, follower_id: str, followed_id: str) -> None:
        delete = {"Delete": {"TableName": self.table, "Key": _typed(
            {"PK": keys.user_pk(follower_id), "SK": keys.following_sk(followed_id)})}}
        self._write([
            delete,
            self._counter_update(follower_id, "ADD following_count :inc", -1),
            self._counter_update(followed_id, "ADD followers_count :inc", -1),
        ])
        self.redis.delete(keys.followers_cache(followed_id), keys.following_cache(follower_id))

    def delete_post(self, post_id: str) -> None:
        """Soft delete, as the app marks posts: ``is_deleted = true``."""
        self.dynamodb.update_item(
            TableName=self.table,
            Key=_typed({"PK": keys.post_pk(post_id), "SK": keys.POST_SK}),
            UpdateExpression="SET is_deleted = :t, updated_at = :ts",
            ExpressionAttributeValues=_typed({":t": True, ":ts": iso_now()}),
        )

    def remove_post(self, post_id: str) -> None:
        """Hard delete of the post item."""
        self.dynamodb.delete_item(
            TableName=self.table, Key=_typed({"PK": keys.post_pk(post_id), "SK": keys.POST_SK})
        )

    def _counter_update(self, user_id: str, expression: str, inc: int, ts: str | None = None) -> dict[str, Any]:
        values: dict[str, Any] = {":inc": inc}
        if ts is not None:
            values[":ts"] = ts
        return {"Update": {
            "TableName": self.table,
            "Key": _typed({"PK": keys.user_pk(user_id), "SK": keys.PROFILE_SK}),
            "UpdateExpression": expression,
            "ExpressionAttributeValues": _typed(values),
        }}

    def _write(self, parts: list[dict[str, Any]]) -> None:
        if self.transactional:
            self.dynamodb.transact_write_items(TransactItems=parts)
            return
        for part in parts:
            ((kind, body),) = part.items()
            call = {"Put": self.dynamodb.put_item, "Update": self.dynamodb.update_item,
                    "Delete": self.dynamodb.delete_item}[kind]
            call(**body)
