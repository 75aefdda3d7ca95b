"""Write the app's OpenAPI document: `python -m service.web.openapi_export openapi/openapi.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from service.app import create_app
from service.config import Settings
from service.crypto import generate_key

# Placeholder values: the schema does not depend on configuration, and nothing
# here is a real credential.
_DOC_SETTINGS: dict[str, Any] = {
    "workfront_url": "https://example.my.workfront.com",
    "client_id": "example-client-id",
    "client_secret": "example-client-secret",
    "redirect_uri": "https://broker.example.com/oauth/callback",
}


def openapi_document() -> dict[str, Any]:
    settings = Settings(_env_file=None, encryption_keys=f"doc:{generate_key()}", **_DOC_SETTINGS)
    return create_app(settings).openapi()


def render() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    target = Path(argv[1] if len(argv) > 1 else "openapi/openapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv)
