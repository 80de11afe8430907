"""Benchmarks: `make bench` runs bench/run.py, which compares this framework with its peers."""
