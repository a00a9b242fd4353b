"""Benchmarks, each run as ``python bench/NAME.py`` (docs/BENCHMARKS.md gives the commands and
figures).

Shared by all: :mod:`bench.common` (machine, clock and statistics, results, command line, stores,
data). The longer benches keep their pieces in a sub-package: :mod:`bench.web` (the HTTP requests
of the server benches, the load test's clients), :mod:`bench.attacks` (``http_attacks.py``),
:mod:`bench.store_load` (``concurrency.py``), :mod:`bench.align_study` (``alignment_study.py``),
:mod:`bench.training` (``train_throughput.py``).
"""
