"""Benchmarks: each prints one JSON object."""
