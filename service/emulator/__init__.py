"""The Workfront emulator: a development and test double, not production.

An in-memory stand-in for an Adobe Workfront instance (ASGI), for the demo
(``python -m service dev``), ``python -m service emulator``, the tests and
the benchmarks. The production code never imports it: only
``service/__main__.py``, ``service/dev.py``, ``tests/`` and ``bench/`` do.
It serves the paths of ``service.workfront.protocol`` (the client calls the
same ones) plus test switches under ``/__emulator/``.

- ``app``: ``create_emulator_app`` (the OAuth2 and ``/attask/api`` routes) and
  ``run_emulator``;
- ``state``: users, codes, grants, refresh tokens, sessions, counters;
- ``faults``: injected 5xx/429, timeouts, dropped connections, latency;
- ``control``: the ``/__emulator/`` switches and their input validation;
- ``pages``: the sign-in and consent page;
- ``settings``: ``EmulatorSettings``, the behaviour knobs.
"""

from service.emulator.app import create_emulator_app, run_emulator
from service.emulator.faults import ConnectionDropped
from service.emulator.settings import EmulatorSettings
from service.emulator.state import EmulatorState

__all__ = [
    "ConnectionDropped",
    "EmulatorSettings",
    "EmulatorState",
    "create_emulator_app",
    "run_emulator",
]
