"""feedpipe's benchmarks: each figure measured next to its baseline in the same run.

``python -m bench`` runs them all (a few minutes) and prints a table, writes
``bench/results.json`` and draws ``docs/benchmarks.png``; ``python -m bench --short`` is the
smoke run CI does (small sizes, no timing judged).
"""
