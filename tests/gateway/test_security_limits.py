"""API keys, limits, CORS, request ids, metrics and the access log, seen from outside."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backends.base import BackendEvent, Chunk, Finished, GenerationRequest, Started
from backends.fake import FakeBackend
from backends.scripted import ScriptedBackendSettings
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings

MODEL = "glm-4.7-flash"
KEY = "sk-test-0123456789"
SECOND_KEY = "sk-other-key"


def make(**settings: Any) -> tuple[TestClient, FakeBackend]:
    model_fields = settings.pop("model", {})
    backend = FakeBackend(context_length=settings.pop("context_length", 4096))
    config = Settings(
        models=[
            ModelSettings(id=MODEL, backend=ScriptedBackendSettings(path="unused"), **model_fields)
        ],
        **settings,
    )
    return TestClient(create_app(config, backends={MODEL: backend})), backend


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra}


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/chat/completions", chat()),
    ("POST", "/v1/chat/completions", chat(stream=True)),
    ("POST", "/v1/chat/completions/render", chat()),
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture
def secured(tmp_path: Path) -> TestClient:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n{SECOND_KEY}\n\n")
    client, _ = make(api_keys=[KEY], api_keys_file=str(keys_file))
    return client


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_a_key(secured: TestClient, method: str, path: str, body: Any) -> None:
    with secured:
        for headers in (
            {},
            {"authorization": "Bearer wrong"},
            {"x-api-key": "wrong"},
            {"authorization": f"Basic {KEY}"},
            {"authorization": "Bearer "},
        ):
            r = secured.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            error = r.json()["error"]
            assert error["type"] == "authentication_error"
            assert error["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        for headers in (
            {"authorization": f"Bearer {KEY}"},
            {"Authorization": f"bearer {SECOND_KEY}"},
            {"x-api-key": KEY},
        ):
            r = secured.request(method, path, json=body, headers=headers)
            assert r.status_code == 200, (headers, r.text)


def test_health_and_ready_are_public(secured: TestClient) -> None:
    with secured:
        assert secured.get("/health").status_code == 200
        assert secured.get("/ready").status_code == 200


def test_keys_never_reach_the_logs(secured: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with secured:
        secured.post(
            "/v1/chat/completions", json=chat(), headers={"authorization": f"Bearer {KEY}"}
        )
        secured.post("/v1/chat/completions", json=chat(), headers={"x-api-key": "sk-wrong-guess"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "request" in text
    assert KEY not in text and "sk-wrong-guess" not in text


def test_without_keys_everything_is_open() -> None:
    client, _ = make()
    with client:
        assert client.get("/metrics").status_code == 200
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_oversize_body_is_413_declared_and_streamed() -> None:
    client, backend = make(max_body_bytes=2048)
    big = chat(messages=[{"role": "user", "content": "x" * 5000}])
    with client:
        r = client.post("/v1/chat/completions", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"

        def chunks() -> Any:
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        # No content-length: the limit is enforced while reading.
        r = client.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    assert len(backend.requests) == 1


def test_too_many_tools_and_messages() -> None:
    client, _ = make(max_tools=2, max_messages=3)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with client:
        r = client.post("/v1/chat/completions", json=chat(tools=[tool] * 3))
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        assert client.post("/v1/chat/completions", json=chat(tools=[tool] * 2)).status_code == 200
        msgs = [{"role": "user", "content": "x"}] * 4
        r = client.post("/v1/chat/completions", json=chat(messages=msgs))
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_max_tokens_cap_per_model() -> None:
    client, backend = make(model={"max_tokens_limit": 100})
    with client:
        r = client.post("/v1/chat/completions", json=chat(max_tokens=101))
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "max_tokens"
        r = client.post("/v1/chat/completions", json=chat(max_completion_tokens=500))
        assert r.json()["error"]["param"] == "max_completion_tokens"
        assert client.post("/v1/chat/completions", json=chat(max_tokens=100)).status_code == 200
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    # The cap also bounds requests that set no max_tokens.
    assert [r.sampling.max_tokens for r in backend.requests] == [100, 100]


def test_prompt_plus_max_tokens_over_context_is_400() -> None:
    client, backend = make(context_length=100)
    with client:
        r = client.post("/v1/chat/completions", json=chat(max_tokens=95))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "100" in error["message"] and "95" in error["message"]
        r = client.post("/v1/chat/completions", json=chat(max_tokens=95, stream=True))
        assert r.status_code == 400
        assert client.post("/v1/chat/completions", json=chat(max_tokens=50)).status_code == 200
    assert backend.active == 0


def test_cors_off_by_default_and_configurable() -> None:
    client, _ = make()
    with client:
        r = client.options(
            "/v1/chat/completions",
            headers={"origin": "https://app.example", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-origin" not in r.headers
    client, _ = make(cors_origins=["https://app.example"], api_keys=[KEY])
    with client:
        r = client.options(
            "/v1/chat/completions",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = client.post(
            "/v1/chat/completions",
            json=chat(),
            headers={"origin": "https://evil.example", "x-api-key": KEY},
        )
        assert "access-control-allow-origin" not in r.headers


def test_request_id_overhead_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="glm_gateway.access")
    client, _ = make()
    with client:
        r = client.post("/v1/chat/completions", json=chat(), headers={"x-request-id": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        assert float(r.headers["x-gateway-overhead-ms"]) >= 0
        generated = client.get("/v1/models").headers["x-request-id"]
        assert len(generated) >= 16
        bad = client.get("/health", headers={"x-request-id": "no spaces allowed"})
        assert bad.headers["x-request-id"] != "no spaces allowed"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "glm_gateway.access"]
    chat_line = next(line for line in lines if line.get("request_id") == "abc-123")
    assert chat_line["status"] == 200
    assert chat_line["model"] == MODEL
    assert chat_line["route"] == "general"
    assert chat_line["completion_tokens"] == 3
    assert chat_line["finish_reason"] == "stop"
    assert chat_line["duration_ms"] >= 0
    assert "prompt" not in chat_line and "output" not in chat_line
    assert sum(1 for line in lines if line["path"] == "/v1/models") == 1


def test_prompt_logging_when_enabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="glm_gateway.access")
    client, _ = make(log_prompts=True)
    with client:
        client.post("/v1/chat/completions", json=chat())
    line = next(
        json.loads(r.getMessage()) for r in caplog.records if r.name == "glm_gateway.access"
    )
    assert line["prompt"].endswith("<|user|>Hi<|assistant|><think>")
    assert line["output"] == "Thinking.</think>Hello there!"


class GroupedChunks(FakeBackend):
    """Streams in groups, as the llamacpp engine does: one chunk standing for 3 tokens."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        yield Started(self.prompt_tokens)
        yield Chunk("Hello")
        await asyncio.sleep(0.03)
        yield Chunk(" there, you", tokens=3)
        yield Finished("stop", self.prompt_tokens, 4)


def test_inter_token_latency_counts_every_token_of_a_grouped_chunk() -> None:
    config = Settings(models=[ModelSettings(id=MODEL, backend=ScriptedBackendSettings(path="x"))])
    client = TestClient(create_app(config, backends={MODEL: GroupedChunks()}))
    with client:
        client.post("/v1/chat/completions", json=chat())
        text = client.get("/metrics").text
    name = "glm_gateway_inter_token_latency_seconds"
    assert f'{name}_count{{model="{MODEL}"}} 3.0' in text
    total = next(line for line in text.splitlines() if line.startswith(f"{name}_sum"))
    # The gap is shared by the chunk's tokens: together they took it once.
    assert 0.03 <= float(total.split()[-1]) < 1.0


def test_metrics_count_what_happened() -> None:
    client, _ = make()
    with client:
        client.post("/v1/chat/completions", json=chat())
        with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
            r.read()
        client.post("/v1/chat/completions", json=chat(model="nope"))
        text = client.get("/metrics").text
    # Labelled by the wire API that served each request.
    api = 'api="openai_chat",'
    assert (
        f'glm_gateway_requests_total{{{api}model="{MODEL}",route="general",status="200"}} 2.0'
        in (text)
    )
    assert f'glm_gateway_requests_total{{{api}model="-",route="-",status="404"}} 1.0' in text
    assert f'request_duration_seconds_count{{{api}model="{MODEL}",route="general"}} 2.0' in text
    assert f'glm_gateway_completion_tokens_total{{model="{MODEL}"}} 6.0' in text
    assert f'glm_gateway_reasoning_tokens_total{{model="{MODEL}"}} 2.0' in text
    assert f'glm_gateway_time_to_first_token_seconds_count{{model="{MODEL}"}} 2.0' in text
    assert f'glm_gateway_inter_token_latency_seconds_count{{model="{MODEL}"}} 4.0' in text
    assert f'glm_gateway_queue_depth{{model="{MODEL}"}} 0.0' in text
    assert f'glm_gateway_backend_healthy{{model="{MODEL}"}} 1.0' in text
    assert "glm_gateway_queue_wait_seconds_bucket" in text
    assert "glm_gateway_request_duration_seconds_bucket" in text


def test_client_gone_while_sending_its_body_is_499_not_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket
    import time

    import httpx

    from tests.conftest import serve

    _, backend = make()
    app = create_app(
        Settings(models=[ModelSettings(id=MODEL, backend=ScriptedBackendSettings(path="x"))]),
        backends={MODEL: backend},
    )
    with serve(app) as url, caplog.at_level(logging.ERROR, logger="glm_gateway"):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model"'
            )
            time.sleep(0.2)
        # The access log and metrics see a cancelled request, not a server error.
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline and 'status="499"' not in text:
            text = httpx.get(f"{url}/metrics").text
            time.sleep(0.1)
    assert 'api="openai_chat",model="-",route="-",status="499"' in text
    assert 'status="500"' not in text
    assert not [r for r in caplog.records if "unhandled" in r.getMessage()]
