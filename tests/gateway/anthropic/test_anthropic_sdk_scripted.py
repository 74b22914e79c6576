"""The real ``anthropic`` SDK against a real uvicorn socket, on scripted outputs.

The SDK's own stream helper (``messages.stream()``) must assemble exactly the non-streamed
message, whatever the chunking: thinking, text, parallel and zero-argument calls, unicode and
a 20 KB argument streamed as it is generated. Errors must come in Anthropic's shape and
status, before the headers and after them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from backends.errors import BackendUnavailable
from backends.fake import FakeBackend
from backends.scripted import ScriptedBackendSettings
from gateway.app import create_app
from gateway.settings import AdmissionSettings, ModelSettings, Settings
from tests.conftest import serve

TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "description": "Get the weather",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
    {"name": "list_files", "input_schema": {"type": "object", "properties": {}}},
    {
        "name": "write_file",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        },
    },
]

BIG = "".join(f'<p class="row">{i} naïve “quoted” \\ line</p>\n' for i in range(500))
assert len(BIG.encode()) > 20_000

OUTPUTS: dict[str, str] = {
    "thinking-and-text": "The user greets me.</think>Hello! How can I help?",
    "two-parallel-calls": "Two cities.</think>Checking both.<tool_call>get_weather<arg_key>city"
    "</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>3</arg_value>"
    "</tool_call><tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value>"
    "</tool_call>",
    "zero-argument": "List them.</think><tool_call>list_files</tool_call>",
    "unicode": "想一想 🤔</think>北京天气 🌤 — München<tool_call>get_weather<arg_key>city"
    "</arg_key><arg_value>北京</arg_value></tool_call>",
    "big-argument": "Write it.</think><tool_call>write_file<arg_key>path</arg_key><arg_value>"
    f"a.html</arg_value><arg_key>content</arg_key><arg_value>{BIG}</arg_value></tool_call>",
}
CHUNK_SIZES = (1, 7, 1000)
BASE: dict[str, Any] = {
    "model": "glm",
    "max_tokens": 100_000,
    "messages": [{"role": "user", "content": "go"}],
    "tools": TOOLS,
}


def _script(path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("anthropic")
    # Every output in every chunking, twice in a row: the plain request, then the stream.
    equal = [
        {"text": text, "chunk_size": size}
        for text in OUTPUTS.values()
        for size in CHUNK_SIZES
        for _ in range(2)
    ]
    settings = Settings(
        models=[
            ModelSettings(
                id="glm", backend=ScriptedBackendSettings(path=_script(tmp / "a.jsonl", equal))
            ),
            ModelSettings(
                id="plain",
                backend=ScriptedBackendSettings(
                    path=_script(
                        tmp / "b.jsonl", [{"text": "Hm.</think>Hi there.", "chunk_size": 2}]
                    )
                ),
            ),
            ModelSettings(
                id="slow",
                backend=ScriptedBackendSettings(
                    path=_script(
                        tmp / "c.jsonl", [{"text": "x</think>" + "y" * 40, "delay_ms": 50}]
                    )
                ),
                admission=AdmissionSettings(max_concurrent=1, max_queue=0),
            ),
        ],
        anthropic={"default_model": "plain", "model_map": {"claude-haiku-*": "glm"}},
    )
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(gateway: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def comparable(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = message.model_dump(exclude_none=True)
    data.pop("id")
    for block in data["content"]:
        if block["type"] == "tool_use":
            assert block.pop("id").startswith("toolu_")
    return data


def test_stream_helper_equals_the_non_streamed_message(client: anthropic.Anthropic) -> None:
    seen: dict[str, Any] = {}
    for name in OUTPUTS:
        for size in CHUNK_SIZES:
            label = f"{name} / chunk {size}"
            whole = client.messages.create(**BASE)
            with client.messages.stream(**BASE) as stream:
                deltas = [e for e in stream if e.type == "input_json"]
                final = stream.get_final_message()
            assert comparable(final) == comparable(whole), label
            assert whole.id.startswith("msg_") and whole.model == "glm", label
            if size == 1 and name == "big-argument":
                # A long string argument streams as it is generated.
                assert len(deltas) > 1000, label
            seen[name] = comparable(whole)

    assert [b["type"] for b in seen["thinking-and-text"]["content"]] == ["thinking", "text"]
    thinking = seen["thinking-and-text"]["content"][0]
    assert thinking["thinking"] == "The user greets me." and thinking["signature"]
    assert seen["thinking-and-text"]["content"][1]["text"] == "Hello! How can I help?"
    assert seen["thinking-and-text"]["stop_reason"] == "end_turn"

    two = seen["two-parallel-calls"]
    assert [b["type"] for b in two["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert [b["input"] for b in two["content"][2:]] == [
        {"city": "Paris", "days": 3},
        {"city": "Rome"},
    ]
    assert two["stop_reason"] == "tool_use"

    zero = seen["zero-argument"]["content"][-1]
    assert (zero["name"], zero["input"]) == ("list_files", {})

    uni = seen["unicode"]["content"]
    assert uni[0]["thinking"] == "想一想 🤔" and uni[1]["text"] == "北京天气 🌤 — München"
    assert uni[2]["input"] == {"city": "北京"}

    assert seen["big-argument"]["content"][-1]["input"] == {"path": "a.html", "content": BIG}


def test_raw_stream_events(client: anthropic.Anthropic) -> None:
    events = list(client.messages.create(**{**BASE, "model": "plain", "tools": None}, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens > 0
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == [0, 1]
    signature = [
        e for e in events if e.type == "content_block_delta" and e.delta.type == "signature_delta"
    ]
    assert len(signature) == 1 and signature[0].index == 0
    assert events[-2].delta.stop_reason == "end_turn"


def test_claude_ids_resolve_to_served_models(client: anthropic.Anthropic) -> None:
    plain = {**BASE, "tools": None}
    reply = client.messages.create(**{**plain, "model": "claude-sonnet-5-5"})
    # The default model answered; the response names the model the client asked for.
    assert reply.model == "claude-sonnet-5-5"
    assert reply.content[-1].type == "text" and reply.content[-1].text == "Hi there."


def test_count_tokens_equals_the_prompt_the_model_sees(client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": "plain",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": "How many tokens is this?"}],
        "tools": TOOLS,
    }
    counted = client.messages.count_tokens(**request)
    reply = client.messages.create(max_tokens=64, **request)
    usage = reply.usage
    assert counted.input_tokens > 0
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def error_of(exc: anthropic.APIStatusError) -> tuple[int, str]:
    body = exc.body
    assert isinstance(body, dict) and body["type"] == "error", body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return exc.status_code, body["error"]["type"]


def test_image_block_is_a_400(client: anthropic.Anthropic) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
    }
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="plain",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, image]}],
        )
    assert error_of(info.value) == (400, "invalid_request_error")
    assert "messages.0.content.1" in info.value.message and "text only" in info.value.message


def test_unknown_model_is_a_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(
            model="gpt-9", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert error_of(info.value) == (404, "not_found_error")


def test_bad_block_type_is_a_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="plain",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "hologram", "data": "x"}]}],  # type: ignore[list-item]
        )
    assert error_of(info.value) == (400, "invalid_request_error")
    assert "messages.0.content.0.type" in info.value.message


def test_queue_full_is_a_429_with_retry_after(gateway: str, client: anthropic.Anthropic) -> None:
    body = {"model": "slow", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}
    # The first stream holds the model's only place (headers come once it has started).
    with client.messages.with_streaming_response.create(**body, stream=True) as first:
        assert first.status_code == 200
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(**body)
    assert error_of(info.value) == (429, "rate_limit_error")
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_paths_accept_the_beta_query_and_unknown_paths_are_anthropic_404s(gateway: str) -> None:
    body = {"model": "plain", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=gateway, timeout=30) as http:
        assert http.post("/v1/messages?beta=true", json=body).status_code == 200
        counted = http.post("/v1/messages/count_tokens?beta=true", json=body)
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
        missing = http.post("/v1/messages/batches", json={})
        assert missing.status_code == 404
        assert missing.json()["type"] == "error"
        assert missing.json()["error"]["type"] == "not_found_error"
        bad_json = http.post(
            "/v1/messages", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad_json.status_code == 400
        assert bad_json.json()["error"]["type"] == "invalid_request_error"


def _fake_app(fake: FakeBackend, **extra: Any) -> Any:
    model = ModelSettings(id="glm", backend=ScriptedBackendSettings(path="unused.jsonl"))
    return create_app(Settings(models=[model], **extra), backends={"glm": fake})


def test_an_error_after_headers_is_an_error_event() -> None:
    fake = FakeBackend(("Hm.</think>", "Hel", "lo"), fail_after=2)
    body = {"model": "glm", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with (
        serve(_fake_app(fake)) as url,
        anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as c,
        pytest.raises(anthropic.APIStatusError) as info,
    ):
        list(c.messages.create(**body, stream=True))
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_api_keys_as_x_api_key_or_bearer() -> None:
    fake = FakeBackend(("ok</think>", "fine"))
    body = {"model": "glm", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with serve(_fake_app(fake, api_keys=["sk-right"])) as url:
        with anthropic.Anthropic(base_url=url, api_key="sk-right", max_retries=0) as c:
            assert c.messages.create(**body).content[-1].text == "fine"  # type: ignore[union-attr]
        with anthropic.Anthropic(base_url=url, auth_token="sk-right", max_retries=0) as c:
            assert c.messages.create(**body).content[-1].text == "fine"  # type: ignore[union-attr]
        with (
            anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0) as c,
            pytest.raises(anthropic.AuthenticationError) as info,
        ):
            c.messages.create(**body)
    assert error_of(info.value) == (401, "authentication_error")


@pytest.mark.parametrize("stream", [False, True])
def test_an_unavailable_backend_is_overloaded(stream: bool) -> None:
    fake = FakeBackend(fail_at_start=BackendUnavailable("all replicas are down"))
    body = {"model": "glm", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with (
        serve(_fake_app(fake)) as url,
        anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as c,
        pytest.raises(anthropic.APIStatusError) as info,
    ):
        c.messages.create(**body, stream=stream)
    # Before the headers, so a real status: Anthropic's "overloaded", which clients retry.
    assert error_of(info.value) == (529, "overloaded_error")


def test_stop_sequence_and_max_tokens(client: anthropic.Anthropic) -> None:
    ask: dict[str, Any] = {"model": "plain", "messages": [{"role": "user", "content": "x"}]}
    stopped = client.messages.create(max_tokens=100, stop_sequences=["there"], **ask)
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "there")
    assert stopped.content[-1].type == "text" and stopped.content[-1].text.strip() == "Hi"
    with client.messages.stream(max_tokens=100, stop_sequences=["there"], **ask) as stream:
        assert comparable(stream.get_final_message()) == comparable(stopped)
    cut = client.messages.create(max_tokens=3, **ask)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3


def test_count_tokens_without_a_tokenizer_is_a_clear_400() -> None:
    body = {"model": "glm", "messages": [{"role": "user", "content": "x"}]}
    with serve(_fake_app(FakeBackend())) as url, httpx.Client(base_url=url) as http:
        response = http.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "cannot count tokens" in response.json()["error"]["message"]
