"""Argument types shared by the commands: ValueError becomes argparse's error."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from sandbox.units import parse_duration
from sandbox.users import UserIds


def argument_type[T](parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type: its ValueError message is the usage error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return convert


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"expected a port 1-65535, got {text!r}")
    return int(text)


def _positive_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


duration = argument_type(_positive_duration)
port = argument_type(_port)
count = argument_type(_positive_count)
user = argument_type(UserIds.parse)
