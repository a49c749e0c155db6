"""Headless Chromium (Debian: apt-get install chromium) for screenshots of the report and the app."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

# No background connections (the machine may have no network) and a fresh profile per run.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if (found := shutil.which(name)):
            return found
    return None


def _run(target: str | Path, options: list[str], wait_ms: int, timeout: float) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    url = target if isinstance(target, str) and "://" in target else Path(target).resolve().as_uri()
    budget = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []  # let the page's scripts run first
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *budget, *options, url],
                              check=True, capture_output=True, timeout=timeout, text=True)


def screenshot(target: str | Path, png: str | Path, width: int = 1280, height: int = 2000, wait_ms: int = 0,
               timeout: float = 120.0) -> Path:
    """A PNG of a page (an http(s) URL or an HTML file) as headless Chromium renders it."""
    png = Path(png).resolve()
    _run(target, [f"--screenshot={png}", f"--window-size={width},{height}"], wait_ms, timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium ran but wrote no screenshot {png}")
    return png


def page_text(target: str | Path, wait_ms: int = 10000, timeout: float = 120.0) -> str:
    """The page's DOM after its scripts ran (what a user's browser would show)."""
    return _run(target, ["--dump-dom"], wait_ms, timeout).stdout
