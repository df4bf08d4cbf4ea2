"""Benchmarks: scripts run as `.venv/bin/python bench/<name>.py` (see docs/performance.md)."""
