"""The Workfront emulator in its own process: `emulator_proc.py PORT SETTINGS_JSON`.

Its own process so its CPU (and GIL) is not the load generator's nor the broker's.
"""

from __future__ import annotations

import json
import sys

from service.emulator import EmulatorSettings, create_emulator_app
from service.web.serving import make_server, run_event_loop, serve_until_signalled


def main() -> None:
    port = int(sys.argv[1])
    settings = EmulatorSettings(**json.loads(sys.argv[2]))
    server = make_server(
        create_emulator_app(settings), host="127.0.0.1", port=port, log_level="warning"
    )
    run_event_loop(serve_until_signalled(server))


if __name__ == "__main__":
    main()
