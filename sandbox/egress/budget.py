"""Exfiltration budgets: bytes the app may send to one destination per window.

A window opens with the first byte counted for a destination and lasts the
rule's ``bytes_out_window`` seconds; the next byte after it opens a fresh
one. Bytes are counted before they are forwarded, so what leaves never
exceeds the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.policy.model import EgressRule


@dataclass
class _Window:
    opened: float
    used: int = 0


class ByteBudgets:
    """Spent bytes per (rule, host:port); one instance per egress proxy."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def remaining(self, rule: EgressRule | None, destination: str) -> int | None:
        """Bytes still allowed now; None when the rule sets no budget."""
        if rule is None or rule.max_bytes_out is None:
            return None
        return rule.max_bytes_out - self._window(rule, destination).used

    def spend(self, rule: EgressRule | None, destination: str, count: int) -> bool:
        """Count ``count`` bytes; False (and nothing counted) if they do not fit."""
        remaining = self.remaining(rule, destination)
        if remaining is None:
            return True
        if count > remaining:
            return False
        assert rule is not None
        self._window(rule, destination).used += count
        return True

    def spent_reason(self, rule: EgressRule, destination: str) -> str:
        window = self._window(rule, destination)
        left = max(0.0, window.opened + rule.bytes_out_window - self._clock())
        return (
            f"rule {rule.name!r} lets the app send {rule.max_bytes_out} bytes to "
            f"{destination} per {rule.bytes_out_window:g}s; {window.used} are "
            f"spent and the window reopens in {left:.0f}s"
        )

    def _window(self, rule: EgressRule, destination: str) -> _Window:
        key = (rule.name, destination)
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.opened >= rule.bytes_out_window:
            window = self._windows[key] = _Window(now)
        return window
