"""Feed members as the app reads them from ``feed:{user_id}``: canonical JSON of immutable fields.

The app's ``getFeed`` does ``JSON.parse(member)`` and reads ``postId``. A member is built only
from a post's immutable fields with sorted keys and no spaces, so a redelivered post yields the
byte-identical member and ZADD cannot duplicate it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from feedpipe.core.events import Post


class MemberFormat(StrEnum):
    FULL = "full"  # what the seed's addToFeed stores: the post's data with postId
    COMPACT = "compact"  # ids only; the app then loads post bodies itself


def encode_member(post: Post, fmt: MemberFormat = MemberFormat.FULL) -> str:
    if fmt is MemberFormat.COMPACT:
        body: dict[str, Any] = {"authorId": post.author_id, "postId": post.post_id}
    else:
        body = {
            "authorId": post.author_id,
            "authorUsername": post.author_username,
            "contentPreview": post.content_preview,
            "contentType": post.content_type,
            "createdAt": post.created_at,
            "postId": post.post_id,
        }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def member_score(post: Post) -> int:
    """Sorted-set score: ``created_at`` as epoch milliseconds."""
    return post.created_at_ms
