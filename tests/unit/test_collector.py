"""The consumer process's garbage collector: collecting less often while it runs, nothing else."""

from __future__ import annotations

import gc

from feedpipe.consumers.collector import YOUNG_GENERATION_THRESHOLD, tuned_collector


def test_the_consumer_collects_its_young_generation_less_often_while_it_runs() -> None:
    before = gc.get_threshold()
    with tuned_collector():
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:])
        assert gc.isenabled()
    assert gc.get_threshold() == before


def test_the_thresholds_are_set_back_when_the_run_raises() -> None:
    before = gc.get_threshold()
    try:
        with tuned_collector():
            raise RuntimeError("the consumer stopped on an error")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
