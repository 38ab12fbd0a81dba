"""What the test suite and the benchmarks both use to run TaskHub for real.

Worker and beat processes (``processes``), throw-away Redis and PostgreSQL
servers (``servers``), databases made and dropped for a run (``databases``),
the process table (``proctable``) and waiting for a condition (``waiting``).
Nothing here imports pytest: the suite's fixtures in ``tests/conftest.py``
wrap these, and the benchmarks call them directly.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
