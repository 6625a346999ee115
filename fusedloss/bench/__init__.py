"""Benchmark suite (issue 3)."""
