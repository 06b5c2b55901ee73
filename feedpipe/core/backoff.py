"""The one backoff feedpipe waits by: capped exponential with full jitter.

Full jitter (a uniform draw between 0 and the capped exponential) spreads out the retries of
many workers that failed together, so they do not come back together (AWS Architecture Blog,
"Exponential Backoff and Jitter"). The stream reads, the publisher, the batch writes and the
task retries all wait by it.
"""

from __future__ import annotations

import random

MAX_EXPONENT = 30  # far past any cap: a long outage never overflows the float


def full_jitter(base: float, attempt: int, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0 or more)."""
    return random.uniform(0, min(cap, base * 2 ** min(max(attempt, 0), MAX_EXPONENT)))
