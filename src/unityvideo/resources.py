"""Will it fit, and how long will it take: checked before work that could exhaust the machine.

A command with an impossible size (`world --size 100000 100000`) must say so at once, with what it
would need, instead of growing memory until the system kills it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

GIB = 1024 ** 3
LONG_SECONDS = 3600.0


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable), else the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def check_memory(need: float, what: str, fix: str) -> None:
    """Refuse `what` when it needs more than 90 % of the available memory."""
    have = available_memory()
    if need > 0.9 * have:
        raise ValueError(f"{what} needs about {need / GIB:,.1f} GiB of memory, and {have / GIB:,.1f} GiB are "
                         f"available; {fix}")


def warn_if_long(seconds: float, what: str) -> None:
    if seconds > LONG_SECONDS:
        log.warning("%s will take about %.1f hours on this machine", what, seconds / 3600)
