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


def test_one_benchmarks_figures_leave_the_whole_suites_file_alone():
    from bench.__main__ import results_path

    whole = results_path(None)
    assert results_path(["million"]) != whole
    assert results_path(["million"]).parent == whole.parent
    assert results_path(["cpu", "fanout"]) not in (whole, results_path(["million"]))
