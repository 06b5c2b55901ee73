"""Timestamps as the app writes them: JavaScript's ``Date.prototype.toISOString()``.

Every timestamp feedpipe stores where the app or its operators read it (feed items, its own
tables) has this one form, ``YYYY-MM-DDTHH:MM:SS.mmmZ``, so a string comparison orders them the
same way as the app's ``created_at`` and nobody has to parse two spellings of UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_timestamp(moment: datetime) -> str:
    """``moment`` in UTC, to the millisecond, with ``Z`` (a naive ``moment`` is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def now_timestamp() -> str:
    """The current time in the app's form."""
    return format_timestamp(datetime.now(UTC))
