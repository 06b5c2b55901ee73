"""One measured figure, with the baseline it is compared against."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    """``value`` measured for feedpipe, ``baseline`` measured the same way in the same run.

    ``better`` says which direction wins ("higher" for throughput, "lower" for time, CPU and
    memory). ``target`` is the issue's target in words, and ``met`` whether this run met it
    (None when the target is not a comparison this run can judge).
    """

    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    better: str = "higher"
    target: str = ""
    met: bool | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """How many times better than the baseline (>1 is better, whichever the direction)."""
        if not self.baseline or not self.value:
            return None
        return self.value / self.baseline if self.better == "higher" else self.baseline / self.value

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}
