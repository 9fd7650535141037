"""Helpers of ``tools/benchmark.py`` (issue 8): the accuracy grid, speed, inference and the report."""
