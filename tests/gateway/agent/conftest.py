"""A scripted backend that records what it was asked, served through the real SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import openai

from backends.base import BackendEvent, GenerationRequest
from backends.scripted import ScriptedBackendSettings
from backends.scripted.backend import ScriptedBackend, ScriptedResponse
from gateway.app import create_app
from gateway.settings import ModelSettings, RouteSettings, Settings
from tests.conftest import serve

MODEL = "glm"


class RecordingBackend(ScriptedBackend):
    """Scripted output; keeps each request so tests can see continuations' prompts."""

    def __init__(self, responses: list[ScriptedResponse]) -> None:
        super().__init__(responses)
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        self.requests.append(request)
        async for event in super().generate(request):
            yield event


def scripted(*texts: str, chunk: int = 1) -> list[ScriptedResponse]:
    return [
        ScriptedResponse(tuple(text[i : i + chunk] for i in range(0, len(text), chunk)))
        for text in texts
    ]


@contextmanager
def gateway(
    backend: ScriptedBackend, routes: dict[str, RouteSettings] | None = None, **settings: Any
) -> Iterator[tuple[str, openai.OpenAI]]:
    config = Settings(
        models=[
            ModelSettings(
                id=MODEL, backend=ScriptedBackendSettings(path="unused"), routes=routes or {}
            )
        ],
        **settings,
    )
    key = (config.api_keys or ["unused"])[0]
    with (
        serve(create_app(config, backends={MODEL: backend})) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60) as client,
    ):
        yield url, client
