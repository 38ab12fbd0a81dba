"""Benchmarks that print figures and ratios against a bare Celery baseline (``make bench``)."""
