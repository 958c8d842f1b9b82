"""Reproducible benchmarks. Each prints its figures and compares them with a baseline measured
in the same run; none of them is a test."""
