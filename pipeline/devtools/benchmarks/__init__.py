"""Benchmarks ``kdpipe gpu-check`` runs, inside the package so an installed kdpipe has them.

``benchmarks/bench_uld.py``, ``bench_step.py`` and ``bench_data_path.py`` are command-line wrappers of these.
"""
