"""``dev.py``'s commands read as the README shows them."""

from __future__ import annotations

import dev


def test_a_bare_benchmark_name_runs_that_benchmark_alone():
    assert dev.bench_args(["million"]) == ["--only", "million"]
    assert dev.bench_args(["million", "--short"]) == ["--only", "million", "--short"]
    assert dev.bench_args(["cpu", "fanout"]) == ["--only", "cpu", "fanout"]


def test_options_alone_pass_through_unchanged():
    for args in ([], ["--short"], ["--only", "million"], ["--replot", "--json", "out.json"]):
        assert dev.bench_args(args) == args
