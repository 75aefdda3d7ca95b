"""The committed OpenAPI document is the app's, and documents every route fully."""

from __future__ import annotations

import json
import re
from typing import Any

from service.web.openapi_export import openapi_document, render
from tests.support import REPO
from tests.support.broker import BrokerHarness

COMMITTED = REPO / "openapi" / "openapi.json"
# Long runs of token characters, or our key prefix followed by real key material.
_SECRET_LOOKING = re.compile(r"(wtb_[A-Za-z0-9_-]{20,}|[A-Za-z0-9_-]{32,})")


def test_committed_openapi_matches_the_app() -> None:
    assert COMMITTED.read_text() == render(), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    ]


def test_every_route_has_a_summary_and_responses() -> None:
    for path, method, operation in _operations(openapi_document()):
        assert operation.get("summary"), f"{method} {path} has no summary"
        assert operation.get("responses"), f"{method} {path} documents no responses"


def test_operation_ids_are_short_and_unique() -> None:
    """``<tag>-<handler>`` (e.g. connections-get_token): what a generated
    client names its functions after; FastAPI's default spelled out the path."""
    ids = [operation["operationId"] for _, _, operation in _operations(openapi_document())]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z_]+-[a-z_]+", op) and len(op) <= 40 for op in ids), ids
    assert "connections-get_token" in ids


def test_api_routes_document_their_errors() -> None:
    for path, method, operation in _operations(openapi_document()):
        if not path.startswith("/v1/"):
            continue
        responses = operation["responses"]
        for status in ("401", "403", "422"):
            assert status in responses, f"{method} {path} does not document {status}"
        assert "application/problem+json" in responses["401"]["content"]
        if "{connection_id}" in path:
            assert "404" in responses, f"{method} {path} does not document 404"
        if path.endswith(("/token", "/refresh")):
            assert {"409", "503"} <= set(responses)
        assert operation.get("security"), f"{method} {path} shows no security scheme"


def test_no_example_looks_like_a_real_secret() -> None:
    examples: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("example", "examples"):
                    examples.append(json.dumps(value))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(openapi_document())
    assert examples, "expected some examples"
    for example in examples:
        assert not _SECRET_LOOKING.search(example), example


async def test_served_openapi_is_the_committed_document(broker: BrokerHarness) -> None:
    response = await broker.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(COMMITTED.read_text())
    docs = await broker.client.get("/docs")
    assert docs.status_code == 200
