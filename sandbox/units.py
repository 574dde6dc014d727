"""Parsing of the human units a data owner writes: sizes and durations."""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER_AND_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: object) -> int:
    """``1MiB`` -> 1048576. Raises ValueError naming the accepted units."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _NUMBER_AND_UNIT.match(str(value)) if isinstance(value, str) else None
    if match is None or match.group(2) not in _SIZE_UNITS:
        units = ", ".join(unit for unit in _SIZE_UNITS if unit)
        raise ValueError(f"{value!r} is not a size: expected e.g. 1MiB ({units})")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_duration(value: object) -> float:
    """``30s`` -> 30.0 seconds; a bare number is seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _NUMBER_AND_UNIT.match(str(value)) if isinstance(value, str) else None
    if match is None or match.group(2) not in _DURATION_UNITS:
        units = ", ".join(_DURATION_UNITS)
        raise ValueError(f"{value!r} is not a duration: expected e.g. 30s ({units})")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
