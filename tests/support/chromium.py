"""The Chromium the browser tests drive, and getting one on a fresh machine.

``python -m tests.support.chromium`` (run by ``make test`` before pytest)
finds a Chromium, or installs one where it can: Playwright's own download on
a machine with internet, else the system package when running as root on
Debian/Ubuntu. It says in one line what it found or did; where nothing can be
installed it names the one command to run, and the browser tests fail saying
the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "install Chromium with `sudo apt-get install -y chromium` (Debian/Ubuntu), or"
    " `python -m playwright install chromium`, or set CHROMIUM_PATH"
)


def _playwright_chromium() -> str | None:
    """Playwright's own downloaded Chromium, if it was installed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as playwright:
            path = playwright.chromium.executable_path
    except Exception:  # no driver or no browser: nothing to use
        return None
    return path if Path(path).is_file() else None


def find_chromium() -> str | None:
    """CHROMIUM_PATH when set (and only then), else the system's, else Playwright's."""
    given = os.environ.get("CHROMIUM_PATH")
    if given:
        return given if Path(given).is_file() or shutil.which(given) else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return _playwright_chromium()


def _run(*command: str) -> bool:
    try:
        done = subprocess.run(command, capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_chromium() -> tuple[str | None, str]:
    """A usable Chromium, and the one line that says how it was had."""
    found = find_chromium()
    if found:
        return found, f"browser tests: Chromium at {found}"
    if os.environ.get("CHROMIUM_PATH"):
        return None, f"browser tests: CHROMIUM_PATH={os.environ['CHROMIUM_PATH']} is not there"
    if _run(sys.executable, "-m", "playwright", "install", "chromium"):
        found = _playwright_chromium()
        if found:
            return found, f"browser tests: installed Playwright's Chromium at {found}"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env_ok = _run("apt-get", "update", "-qq") and _run(
            "apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"
        )
        found = find_chromium() if env_ok else None
        if found:
            return found, f"browser tests: installed the system's chromium at {found}"
    return None, f"browser tests: no Chromium and none could be installed: {INSTALL_HINT}"


if __name__ == "__main__":
    _, said = ensure_chromium()
    print(said, flush=True)
