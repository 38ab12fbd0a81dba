"""Durations in human form ("90s", "5m", "1h30m") wherever TaskHub takes seconds."""

from __future__ import annotations

import re

UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Units largest first, each at most once, optional spaces between the parts: "1d 2h", "1h30m", "45s".
_HUMAN = re.compile(r"\A(?:(?P<d>\d+)\s*d)?\s*(?:(?P<h>\d+)\s*h)?\s*(?:(?P<m>\d+)\s*m)?\s*(?:(?P<s>\d+)\s*s)?\Z")
# More digits than any sensible duration has; keeps int() and the arithmetic small on hostile input.
MAX_DIGITS = 12
EXAMPLES = '90, "90s", "5m", "1h30m" or "2d"'


def parse_duration(value: object) -> int:
    """Return ``value`` in whole seconds: an int, digits, or a human form such as "1h30m".

    Raise ValueError with a sentence saying what is accepted. Ranges are the
    caller's business (the model's validators say them).
    """
    if isinstance(value, bool):  # bool is an int subclass: True is not one second
        raise ValueError(f"Expected a duration such as {EXAMPLES}, not {value!r}.")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"A duration cannot be negative ({value}).")
        return value
    if isinstance(value, float):
        if value.is_integer() and value >= 0:
            return int(value)
        raise ValueError(f"Use whole seconds, not {value!r}.")
    if not isinstance(value, str):
        raise ValueError(f"Expected a duration such as {EXAMPLES}, not {type(value).__name__}.")
    text = value.strip().lower()
    if text.isdigit() and len(text) <= MAX_DIGITS:
        return int(text)
    match = _HUMAN.match(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError(f"{_shown(value)} is not a duration; use seconds or a form such as {EXAMPLES}.")
    parts = {unit: digits for unit, digits in match.groupdict().items() if digits is not None}
    if any(len(digits) > MAX_DIGITS for digits in parts.values()):
        raise ValueError(f"{_shown(value)} is too long to be a duration.")
    return sum(int(digits) * UNIT_SECONDS[unit] for unit, digits in parts.items())


def format_duration(seconds: int) -> int | str:
    """Return ``seconds`` in the shortest human form parse_duration reads back: 90 → "1m30s", 3600 → "1h".

    Under a minute stays a plain number, which reads best in a file.
    """
    if seconds < 60:
        return seconds
    parts = []
    rest = seconds
    for unit, size in UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
