"""TaskHub's extensions of Celery and kombu: the few that a whole-system figure justifies.

Each one subclasses or replaces a part of Celery or kombu that is not a
public, documented API, so each has a canary test in
tests/test_celery_ext.py that fails when the library changes under it.
docs/performance.md gives the figures that keep each one here.
"""
