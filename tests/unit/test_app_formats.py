"""The two fields the app itself writes and feedpipe must write the same way (golden values
computed with node: ``s.substring(0, 200)`` and ``new Date(ms).toISOString()``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from feedpipe.config import load_settings
from feedpipe.core.records import cut_preview, parse_record
from feedpipe.core.timestamps import format_timestamp, now_timestamp
from feedpipe.feeds.stores import feed_format

EMOJI = "\U0001f600"  # 😀: two UTF-16 code units, one code point
TO_ISO_STRING = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.mark.parametrize(
    ("content", "preview"),
    [
        (EMOJI * 150, EMOJI * 100),  # substring(0, 200) keeps 100 emoji, not 150
        ("a" * 199 + EMOJI + "b", "a" * 199),  # unit 200 would split the pair: cut before it
        ("a" * 198 + EMOJI + "b", "a" * 198 + EMOJI),  # the pair is units 199 and 200: kept
        ("é" * 250, "é" * 200),  # BMP characters are one unit each
        ("x" * 200, "x" * 200),
        ("short " + EMOJI, "short " + EMOJI),
        ("", ""),
    ],
)
def test_content_preview_is_the_first_200_utf16_units_never_half_a_pair(content: str, preview: str) -> None:
    assert cut_preview(content) == preview


def test_a_post_full_of_emoji_gets_the_apps_preview(load_event: Any) -> None:
    record = load_event("post_insert")
    record["dynamodb"]["NewImage"]["content"] = {"S": EMOJI * 150}

    post = parse_record(record).post  # type: ignore[union-attr]

    assert post.content_preview == EMOJI * 100
    assert len(post.content_preview.encode("utf-16-le")) // 2 == 200


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 1, 15, 10, 30, 1, 42_999, tzinfo=UTC), "2024-01-15T10:30:01.042Z"),
        (datetime(2024, 1, 15, 10, 30, 1, tzinfo=UTC), "2024-01-15T10:30:01.000Z"),
        (datetime(2024, 1, 15, 10, 30, 1, 500_000), "2024-01-15T10:30:01.500Z"),  # naive is UTC
        (datetime(2024, 1, 15, 12, 30, 1, 7_000, tzinfo=timezone(timedelta(hours=2))), "2024-01-15T10:30:01.007Z"),
        (datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "0999-12-31T23:59:59.999Z"),
    ],
)
def test_timestamps_have_the_form_of_to_iso_string(moment: datetime, text: str) -> None:
    assert format_timestamp(moment) == text


def test_now_is_in_the_apps_form() -> None:
    assert TO_ISO_STRING.match(now_timestamp())


def test_feed_items_are_stamped_in_the_apps_form(post_factory: Any) -> None:
    template = feed_format(load_settings({})).item_template(post_factory())

    assert TO_ISO_STRING.match(template["inserted_at"]["S"]), template["inserted_at"]
