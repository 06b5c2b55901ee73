"""Segments of an author's followers, so that separate tasks walk one audience in parallel.

A segment is the followers whose ids lie in ``[lo, hi)`` (``hi`` None: to the end), in GSI1's
order (a follower's GSI1SK is ``FOLLOWER#{id}``, so GSI1 orders followers by id, in code-point
order, which is also UTF-8 byte order, DynamoDB's). A walker of a segment that still has more to
walk after a page splits the rest at a point about halfway between the last id it walked and the
segment's end, keeps the lower part and hands the upper part to a new walker. Nothing about the
ids' distribution is known beforehand, and none is needed: the number of walkers doubles each
page until the segments run out or the ``share`` of walkers is spent. ``share`` is how many
walkers the segment may yet become: a split gives half of it away, so one post's walk never
has more than its first share (``fanout_max_walkers``) of walkers. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

CODE_POINTS = 0x110000
SURROGATES = range(0xD800, 0xE000)  # not characters: never in an id, never in a split point
MAX_SPLIT_CHARS = 64  # longer ids are not split between (follower ids are far shorter)


@dataclass(frozen=True)
class Segment:
    """Followers with ids in ``[lo, hi)``; ``share`` walkers may yet walk them."""

    lo: str = ""
    hi: str | None = None
    share: int = 1

    @property
    def whole(self) -> bool:
        """Every follower, as one unsplit walk reads them."""
        return self.lo == "" and self.hi is None

    def split(self, after: str, top: str) -> tuple[Segment, Segment] | None:
        """The rest of this segment once ``after`` is walked, as a lower part (this walker's) and
        an upper part (a new walker's); ``top`` is the highest id the segment holds. None when
        there are no walkers to give, or no id fits between."""
        if self.share < 2:
            return None
        point = split_point(after, top + "\0")  # the least string above ``top``: the upper part holds it
        if point is None:
            return None
        given = self.share // 2
        return Segment(self.lo, point, self.share - given), Segment(point, self.hi, given)


def split_point(after: str, below: str) -> str | None:
    """A string strictly between ``after`` and ``below``, about halfway (the two as numbers with
    one digit per code point), as short as it can be; None when none fits."""
    if not after < below or max(len(after), len(below)) >= MAX_SPLIT_CHARS:
        return None
    width = max(len(after), len(below)) + 1
    middle = (_number(after, width) + _number(below, width)) // 2
    digits = _digits(middle, width)
    for at, digit in enumerate(digits):
        if digit in SURROGATES:
            digits = [*digits[:at], SURROGATES.stop]
            break
    point = "".join(map(chr, digits)).rstrip("\0")
    for end in range(1, len(point) + 1):  # the shortest prefix above ``after`` (every prefix is <= point)
        if point[:end] > after:
            return point[:end] if point[:end] < below else None
    return None


def _number(text: str, width: int) -> int:
    value = 0
    for char in text.ljust(width, "\0"):
        value = value * CODE_POINTS + ord(char)
    return value


def _digits(value: int, width: int) -> list[int]:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, CODE_POINTS)
        digits.append(digit)
    return digits[::-1]
