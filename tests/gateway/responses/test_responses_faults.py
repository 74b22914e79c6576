"""Failures after the headers: the stream ends with ``error`` and ``response.failed``, which the
real SDK surfaces; before the headers they are plain HTTP errors in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from backends.errors import BackendUnavailable
from backends.fake import FakeBackend
from backends.scripted import ScriptedBackendSettings
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import serve

MODEL = "glm-4.7-flash"


def _served(fake: FakeBackend) -> Any:
    settings = Settings(
        models=[ModelSettings(id=MODEL, backend=ScriptedBackendSettings(path="unused.jsonl"))],
        log_level="warning",
    )
    return serve(create_app(settings, backends={MODEL: fake}))


@pytest.fixture
def client() -> Iterator[tuple[openai.OpenAI, FakeBackend]]:
    fake = FakeBackend(("Thinking.</think>", "Hello", " there", "!"), fail_after=2)
    with _served(fake) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c:
        yield c, fake


def test_mid_stream_failure_ends_with_response_failed(
    client: tuple[openai.OpenAI, FakeBackend],
) -> None:
    sdk, fake = client
    events = list(sdk.responses.create(model=MODEL, input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-2:] == ["error", "response.failed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.message
    # What was generated before the failure is in the failed response.
    assert any(item.type == "reasoning" for item in failed.output)
    assert fake.active == 0


def test_failure_before_headers_is_an_http_error(
    client: tuple[openai.OpenAI, FakeBackend],
) -> None:
    sdk, fake = client
    fake.fail_after = None
    fake.fail_at_start = BackendUnavailable("engine is down")
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as err:
            if stream:
                list(sdk.responses.create(model=MODEL, input="hi", stream=True))
            else:
                sdk.responses.create(model=MODEL, input="hi")
        assert err.value.status_code == 503
        assert set(err.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
