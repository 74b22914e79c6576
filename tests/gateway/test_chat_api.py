"""The HTTP surface over the scripted backend: shapes, SSE framing, errors, render, models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backends.scripted import ScriptedBackend, ScriptedBackendSettings, ScriptedResponse
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings

MODEL = "glm-4.7-flash"


def make_client(*responses: ScriptedResponse, aliases: list[str] | None = None) -> TestClient:
    settings = Settings(
        models=[
            ModelSettings(
                id=MODEL,
                aliases=aliases or [],
                backend=ScriptedBackendSettings(path="unused.jsonl"),
            )
        ]
    )
    backend = ScriptedBackend(list(responses))
    return TestClient(create_app(settings, backends={MODEL: backend}))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client(
        ScriptedResponse(("The user ", "greets.</thi", "nk>\n\nHello", "! How can I help?"))
    ) as c:
        yield c


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra}


def sse_events(response: Any) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_non_streaming_splits_reasoning_and_content(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["reasoning_content"] == "The user greets."
    assert message["reasoning"] == "The user greets."
    assert message["content"] == "Hello! How can I help?"
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 4
    # "The user ", "greets.</thi" and "nk>..." (which closes the reasoning) are reasoning chunks.
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 2
    assert r.headers["x-sampling-route"] == "general"


def test_streaming_sse_shape_and_usage(client: TestClient) -> None:
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json=chat(stream=True, stream_options={"include_usage": True}),
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 4
    finish_chunk = chunks[-2]
    assert finish_chunk["choices"][0]["finish_reason"] == "stop"
    reasoning = content = ""
    for c in chunks[1:-2]:
        delta = c["choices"][0]["delta"]
        assert not ("content" in delta and "reasoning_content" in delta)
        reasoning += delta.get("reasoning_content", "")
        content += delta.get("content", "")
        assert c["choices"][0]["finish_reason"] is None
    assert reasoning == "The user greets."
    assert content == "Hello! How can I help?"
    assert len({c["id"] for c in chunks}) == 1


def test_streaming_without_usage_has_no_usage_chunk(client: TestClient) -> None:
    with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
        events = sse_events(r)
    assert all(e == "[DONE]" or e["choices"] for e in events)


def test_thinking_off_via_template_kwargs_renders_and_parses_as_content() -> None:
    with make_client(ScriptedResponse(("Paris.",))) as c:
        body = chat(chat_template_kwargs={"enable_thinking": False})
        r = c.post("/v1/chat/completions", json=body)
        assert r.json()["choices"][0]["message"]["content"] == "Paris."
        assert r.json()["choices"][0]["message"]["reasoning_content"] is None
        assert r.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
        prompt = c.post("/v1/chat/completions/render", json=body).json()["prompt"]
        assert prompt.endswith("<|assistant|></think>")


def test_reasoning_effort_none_turns_thinking_off() -> None:
    with make_client(ScriptedResponse(("x",))) as c:
        prompt = c.post("/v1/chat/completions/render", json=chat(reasoning_effort="none")).json()[
            "prompt"
        ]
    assert prompt == "[gMASK]<sop><|user|>Hi<|assistant|></think>"


def test_render_endpoint_returns_exact_prompt_and_add_generation_prompt(client: TestClient) -> None:
    r = client.post("/v1/chat/completions/render", json=chat())
    assert r.json()["prompt"] == "[gMASK]<sop><|user|>Hi<|assistant|><think>"
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "reasoning_content": "R"},
    ]
    r = client.post(
        "/v1/chat/completions/render",
        json={"model": MODEL, "messages": messages, "add_generation_prompt": False},
    )
    assert r.json()["prompt"] == "[gMASK]<sop><|user|>Q<|assistant|><think>R</think>A"


def test_stop_string_and_max_tokens() -> None:
    with make_client(ScriptedResponse(("a</think>one ", "two ", "three ", "four"))) as c:
        r = c.post("/v1/chat/completions", json=chat(stop=["thr"]))
        assert r.json()["choices"][0]["message"]["content"] == "one two"
        assert r.json()["choices"][0]["finish_reason"] == "stop"
        r = c.post("/v1/chat/completions", json=chat(max_tokens=1))
        assert r.json()["choices"][0]["message"]["content"] == "one"
        assert r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == 1


def test_glm_stop_token_ends_generation_and_is_not_returned() -> None:
    with make_client(ScriptedResponse(("a</think>Done.<|user|>", "never"))) as c:
        r = c.post("/v1/chat/completions", json=chat())
    assert r.json()["choices"][0]["message"]["content"] == "Done."


def test_models_and_health(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [MODEL, f"{MODEL}:general", f"{MODEL}:tools"]
    card = listing["data"][0]
    assert card["context_length"] == 202_752
    assert card["capabilities"]["reasoning"] is True
    assert card["sampling"]["general"]["temperature"] == 1.0
    assert card["sampling"]["tools"] == {
        "temperature": 0.7,
        "top_p": 1.0,
        "min_p": 0.01,
        "repeat_penalty": 1.0,
    }
    assert listing["data"][2]["route"] == "tools"
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200


def test_alias_resolves_and_is_echoed() -> None:
    with make_client(ScriptedResponse(("a</think>b",)), aliases=["glm"]) as c:
        r = c.post("/v1/chat/completions", json={**chat(), "model": "glm"})
        assert r.json()["model"] == "glm"
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert ids[:2] == [MODEL, "glm"]


def assert_error(r: Any, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return dict(error)


def test_malformed_json(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert_error(r, 400, None)
    r = client.post("/v1/chat/completions", json=[1, 2])
    assert_error(r, 400, None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({**chat(), "temperature": "hot"}, "temperature"),
        ({**chat(), "temperature": 7}, "temperature"),
        ({**chat(), "max_tokens": 0}, "max_tokens"),
        ({**chat(), "stream": "yes please"}, "stream"),
        ({**chat(), "top_p": 1.5}, "top_p"),
        ({**chat(), "tools": [{"type": "function"}]}, "tools[0].function"),
    ],
)
def test_schema_violations_name_the_field(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    assert_error(client.post("/v1/chat/completions", json=body), 400, param)


def test_unknown_model_is_404(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**chat(), "model": "gpt-4"})
    assert_error(r, 404, "model", "model_not_found")


def test_n_greater_than_one_is_refused(client: TestClient) -> None:
    assert_error(client.post("/v1/chat/completions", json=chat(n=2)), 400, "n")


def test_image_parts_are_refused_not_dropped(client: TestClient) -> None:
    content = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    assert_error(client.post("/v1/chat/completions", json=body), 400, "messages[0].content[1].type")


def test_unknown_fields_are_ignored(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(some_vendor_extra={"a": 1}, store=False))
    assert r.status_code == 200


def test_unknown_route_is_openai_shaped(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert_error(r, 404, None)


def test_several_models_at_once() -> None:
    settings = Settings(
        models=[
            ModelSettings(id="a", backend=ScriptedBackendSettings(path="unused")),
            ModelSettings(id="b", aliases=["bee"], backend=ScriptedBackendSettings(path="unused")),
        ]
    )
    backends = {
        "a": ScriptedBackend([ScriptedResponse(("r</think>from a",))]),
        "b": ScriptedBackend([ScriptedResponse(("r</think>from b",))]),
    }
    with TestClient(create_app(settings, backends=backends)) as c:
        for name, expected in (("a", "from a"), ("b", "from b"), ("bee", "from b")):
            body = {"model": name, "messages": [{"role": "user", "content": "x"}]}
            r = c.post("/v1/chat/completions", json=body)
            assert r.json()["choices"][0]["message"]["content"] == expected
        ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
        assert {"a", "b", "bee", "a:tools", "b:general"} <= ids
