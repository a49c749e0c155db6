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
from pathlib import Path
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


def device(allow_auto: bool = False) -> Callable[[str], str]:
    """A torch device this machine has: cpu, cuda, cuda:N (N < the GPU count), mps (and `auto`)."""
    def parse(text: str) -> str:
        if allow_auto and text == "auto":
            return text
        import torch

        try:
            chosen = torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N"
                                             + (" (or auto)" if allow_auto else "")) from None
        if chosen.type == "cuda":
            if not torch.cuda.is_available():
                raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU (torch sees none); use cpu")
            if chosen.index is not None and chosen.index >= torch.cuda.device_count():
                raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA "
                                                 f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        elif chosen.type == "mps" and not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine; use cpu")
        elif chosen.type not in ("cpu", "cuda", "mps"):
            raise argparse.ArgumentTypeError(f"{text}: unsupported device type {chosen.type!r}; use cpu or cuda")
        return text
    parse.__name__ = "device"
    return parse


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing file among `path`'s parents (a folder that cannot be created)."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def output_file(text: str) -> Path:
    """A file to write: its folder may be missing (it is created), but not be a file."""
    path = Path(text)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{path}: {blocker} is a file, not a folder")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; name a file in it")
    return path


def output_folder(text: str) -> Path:
    """A folder to write into (created if missing); neither it nor a parent may be a file."""
    path = Path(text)
    blocker = path if path.exists() and not path.is_dir() else _file_in_the_way(path)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{path}: {blocker} is a file, not a folder")
    return path
