"""schemathesis against the app's own OpenAPI schema: no 5xx, responses match their schemas.

Every operation gets a bounded, reproducible set of generated requests (derandomized, no example
database), sent over loopback to a real uvicorn running the scripted backend.

The chat operations read their body by hand, so their request schema is added to the document
by ``gateway.app``; ``test_every_ref_in_the_served_schema_resolves`` checks that every reference
in it resolves, so that the chat bodies are actually generated and sent.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from backends.scripted import ScriptedBackend, ScriptedBackendSettings, ScriptedResponse
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import serve

MODEL = "glm-4.7-flash"
MAX_EXAMPLES = 30


def _app() -> FastAPI:
    settings = Settings(
        models=[ModelSettings(id=MODEL, backend=ScriptedBackendSettings(path="unused.jsonl"))],
        log_level="warning",
    )
    backend = ScriptedBackend(
        [
            ScriptedResponse(("Let me ", "think.</think>", "Hello", "!")),
            ScriptedResponse(("no reasoning here",)),
        ]
    )
    return create_app(settings, backends={MODEL: backend})


APP = _app()
SERVED: dict[str, Any] = copy.deepcopy(APP.openapi())


def _resolve(document: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return False
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}/{i}")


schema = schemathesis.openapi.from_dict(copy.deepcopy(SERVED))


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(APP) as base:
        yield base


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_every_ref_in_the_served_schema_resolves() -> None:
    dangling = sorted(
        {f"{ref} (at {where})" for where, ref in _refs(SERVED) if not _resolve(SERVED, ref)}
    )
    assert dangling == [], (
        f"{len(dangling)} $ref(s) in /openapi.json point at nothing, so clients and tools "
        "cannot read the chat request body schema:\n" + "\n".join(dangling)
    )


def test_the_fuzzed_schema_generates_chat_bodies() -> None:
    for path in (
        "/v1/chat/completions",
        "/v1/chat/completions/render",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ):
        operation = schema[path]["POST"]
        assert list(operation.body), f"no request body schema for {path}"
    assert {path for path, _ in _paths(SERVED)} >= {
        "/v1/chat/completions",
        "/v1/chat/completions/render",
        "/v1/models",
        "/v1/models/{model_id}",
        "/health",
        "/ready",
        "/metrics",
    }


def _paths(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for path, item in document["paths"].items():
        for method in item:
            yield path, method


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms(case: Case, url: str, session: requests.Session) -> None:
    # Most generated bodies name a model that does not exist (a 404, fine, but it stops there):
    # name the served model so that the rest of the body is exercised too.
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = MODEL
    case.call_and_validate(
        base_url=url,
        session=session,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )
