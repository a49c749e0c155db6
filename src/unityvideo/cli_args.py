"""Argument types for the command lines: numbers checked when parsed, so a bad flag is a one-line
error that names it (`argument --fps: must be an integer >= 1, got 0`) instead of a traceback, or
worse, a run that goes on with it.

    p.add_argument("--fps", type=integer(1), default=8)
    p.add_argument("--guidance", type=number(0), default=None)
    p.add_argument("--shift", type=number(0, open_low=True), default=None)
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def integer(minimum: int | None = None) -> Callable[[str], int]:
    """An int >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def number(minimum: float | None = None, open_low: bool = False) -> Callable[[str], float]:
    """A finite float >= `minimum` (> it when `open_low`); nan and inf are refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if open_low else value < minimum):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if open_low else '>='} {minimum:g}, got {value:g}")
        return value
    parse.__name__ = "number"
    return parse
