"""How `make test` finds the browser tests' Chromium (tests/support/chromium.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.support.chromium import ensure_chromium, find_chromium


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_chromium_path_wins_when_it_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    given = _executable(tmp_path / "my-chromium")
    monkeypatch.setenv("CHROMIUM_PATH", str(given))
    assert find_chromium() == str(given)


def test_a_missing_chromium_path_is_said_and_nothing_installed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHROMIUM_PATH", str(tmp_path / "nowhere"))
    found, said = ensure_chromium()
    assert found is None
    assert "is not there" in said


def test_the_system_chromium_is_found_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CHROMIUM_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    chromium = _executable(tmp_path / "chromium")
    assert find_chromium() == str(chromium)
