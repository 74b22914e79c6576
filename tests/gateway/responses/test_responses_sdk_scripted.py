"""The Responses API through the real ``openai`` SDK on the scripted backend.

For each canned output the SDK's three ways of asking (``create``, ``create(stream=True)``,
``responses.stream()``) must give the same response; chains through ``previous_response_id``
must render the same prompt as the same items sent statelessly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from backends.scripted import ScriptedBackendSettings
from gateway.api.openai_responses.settings import ResponsesSettings
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import serve

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city.",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
    {"type": "function", "name": "list_files", "parameters": {"type": "object", "properties": {}}},
    {
        "type": "function",
        "name": "write_file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        },
    },
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch (raw text)."},
    {"type": "web_search"},
]
BIG = "".join(f"<p>line {i} — ünïcode “q” \\ {i % 7}</p>\n" for i in range(600))
assert len(BIG) > 20_000
OUTPUTS: dict[str, str] = {
    "reasoning-and-text": "Let me think about it.</think>The answer is 42.",
    "parallel-calls": "Two cities.</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>"
    "Paris</arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call><tool_call>"
    "get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>",
    "zero-argument": "x</think><tool_call>list_files</tool_call>",
    "custom-tool": "patch it</think><tool_call>apply_patch<arg_key>input</arg_key><arg_value>"
    '*** Begin Patch\n*** Add File: a.txt\n+say "hi" \\ there\n*** End Patch</arg_value>'
    "</tool_call>",
    "unicode": "想一想 🌤</think>北京天气 — München<tool_call>get_weather<arg_key>city</arg_key>"
    "<arg_value>北京</arg_value></tool_call>",
    "big-argument": f"write</think><tool_call>write_file<arg_key>path</arg_key><arg_value>a.html"
    f"</arg_value><arg_key>content</arg_key><arg_value>{BIG}</arg_value></tool_call>",
}


@contextmanager
def scripted(
    tmp_path: Path, lines: Sequence[dict[str, Any]], responses: ResponsesSettings | None = None
) -> Iterator[tuple[str, openai.OpenAI]]:
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    settings = Settings(
        models=[ModelSettings(id="glm", backend=ScriptedBackendSettings(path=str(script)))],
        responses=responses or ResponsesSettings(),
    )
    with (
        serve(create_app(settings)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        yield url, client


def normalized(response: Any) -> dict[str, Any]:
    """The response without what differs by design between two runs: ids, times, nonces."""
    body = response.model_dump(mode="json", exclude_none=True)
    for key in ("id", "created_at", "completed_at"):
        body.pop(key, None)
    for item in body["output"]:
        for key in ("id", "call_id", "encrypted_content"):
            item.pop(key, None)
    return body


def test_create_stream_and_stream_helper_agree(tmp_path: Path) -> None:
    # Each output three times (create, create(stream=True), stream()), in small chunks: the
    # scripted backend counts a chunk as a token, so usage is the same only for one chunking.
    lines = [
        {"text": text, "chunk_size": 64 if name == "big-argument" else 3}
        for name, text in OUTPUTS.items()
        for _ in range(3)
    ]
    kwargs: dict[str, Any] = {
        "model": "glm",
        "input": "go",
        "tools": TOOLS,
        "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"],
    }
    with scripted(tmp_path, lines) as (_, client):
        for name in OUTPUTS:
            plain = client.responses.create(**kwargs)
            events = list(client.responses.create(stream=True, **kwargs))
            assert [e.sequence_number for e in events] == list(range(len(events))), name
            assert events[0].type == "response.created"
            assert events[-1].type == "response.completed"
            streamed = events[-1].response
            with client.responses.stream(**kwargs) as stream:
                helper = stream.get_final_response()
            assert normalized(plain) == normalized(streamed) == normalized(helper), name
            assert plain.status == "completed" and plain.usage is not None
            assert plain.usage.output_tokens > 0
            done = [e.item for e in events if e.type == "response.output_item.done"]
            assert [i.model_dump() for i in done] == [i.model_dump() for i in streamed.output]
            check_output(name, plain, events)


def check_output(name: str, response: Any, events: list[Any]) -> None:
    kinds = [item.type for item in response.output]
    calls = [item for item in response.output if item.type == "function_call"]
    assert kinds[0] == "reasoning"
    assert response.output[0].content[0].text == response.output[0].summary[0].text
    assert response.output[0].encrypted_content.startswith("glmgw1.")
    if name == "reasoning-and-text":
        assert kinds == ["reasoning", "message"]
        assert response.output_text == "The answer is 42."
    elif name == "parallel-calls":
        assert [json.loads(c.arguments) for c in calls] == [
            {"city": "Paris", "days": 3},
            {"city": "Rome"},
        ]
        assert len({c.call_id for c in calls}) == 2
    elif name == "zero-argument":
        assert (calls[0].name, calls[0].arguments) == ("list_files", "{}")
    elif name == "custom-tool":
        (custom,) = [i for i in response.output if i.type == "custom_tool_call"]
        assert custom.name == "apply_patch"
        assert (
            custom.input
            == '*** Begin Patch\n*** Add File: a.txt\n+say "hi" \\ there\n*** End Patch'
        )
        deltas = [e.delta for e in events if e.type == "response.custom_tool_call_input.delta"]
        assert len(deltas) > 1 and "".join(deltas) == custom.input
    elif name == "unicode":
        assert response.output[0].content[0].text == "想一想 🌤"
        assert response.output_text == "北京天气 — München"
        assert json.loads(calls[0].arguments) == {"city": "北京"}
    elif name == "big-argument":
        assert json.loads(calls[0].arguments) == {"path": "a.html", "content": BIG}
        deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        # Streamed as generated: many fragments, not one blob at the end.
        assert len(deltas) > 100


def render(url: str, body: dict[str, Any]) -> str:
    answer = httpx.post(f"{url}/v1/responses/render", json={"model": "glm", **body}, timeout=30)
    assert answer.status_code == 200, answer.text
    prompt: str = answer.json()["prompt"]
    return prompt


def replayed(output: Sequence[Any], *, drop_content: bool = False) -> list[dict[str, Any]]:
    items = [item.model_dump(mode="json", exclude_none=True) for item in output]
    if drop_content:  # as Codex resends reasoning: summary and encrypted_content only
        for item in items:
            if item["type"] == "reasoning":
                item.pop("content", None)
                item["summary"] = []
    return items


@pytest.mark.parametrize("sealed", [False, True])
def test_a_chain_renders_like_the_same_items_sent_statelessly(tmp_path: Path, sealed: bool) -> None:
    lines = [
        {"text": OUTPUTS["parallel-calls"]},
        {"text": "Sunny in both.</think>Paris and Rome are sunny."},
    ]
    extra: dict[str, Any] = {"include": ["reasoning.encrypted_content"]} if sealed else {}
    with scripted(tmp_path, lines) as (url, client):
        first = client.responses.create(
            model="glm", input="Weather?", tools=TOOLS, instructions="Be brief.", **extra
        )
        outputs = [
            {"type": "function_call_output", "call_id": c.call_id, "output": f"sunny {i}"}
            for i, c in enumerate(first.output)
            if c.type == "function_call"
        ]
        second = client.responses.create(
            model="glm", previous_response_id=first.id, input=outputs, tools=TOOLS, **extra
        )
        assert second.previous_response_id == first.id
        # The tool loop's reasoning is part of the follow-up's prompt (preserved thinking).
        follow_up = render(
            url, {"previous_response_id": first.id, "input": outputs, "tools": TOOLS}
        )
        assert "Two cities." in follow_up and "sunny 1" in follow_up
        chained = render(
            url, {"previous_response_id": second.id, "input": "And tomorrow?", "tools": TOOLS}
        )
        stateless = render(
            url,
            {
                "input": [
                    {"type": "message", "role": "user", "content": "Weather?"},
                    *replayed(first.output, drop_content=sealed),
                    *outputs,
                    *replayed(second.output, drop_content=sealed),
                    {"type": "message", "role": "user", "content": "And tomorrow?"},
                ],
                "tools": TOOLS,
            },
        )
        assert chained == stateless
        assert "Paris and Rome are sunny." in chained
        # instructions belong to their own request, not to the chain.
        assert "Be brief." not in chained
        stored = client.responses.retrieve(second.id)
        assert normalized(stored) == normalized(second)


def test_unknown_deleted_evicted_and_unstored_ids_are_404(tmp_path: Path) -> None:
    lines = [{"text": "x</think>one"}] * 4
    with scripted(tmp_path, lines, ResponsesSettings(store_max_responses=2)) as (_, client):
        with pytest.raises(openai.NotFoundError) as err:
            client.responses.create(model="glm", input="x", previous_response_id="resp_unknown")
        assert err.value.body["code"] == "response_not_found"  # type: ignore[index]
        assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]
        first = client.responses.create(model="glm", input="a")
        client.responses.create(model="glm", input="b")
        client.responses.create(model="glm", input="c")  # evicts the first (count bound)
        for call in (
            lambda: client.responses.retrieve(first.id),
            lambda: client.responses.create(model="glm", input="x", previous_response_id=first.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        unstored = client.responses.create(model="glm", input="d", store=False)
        assert unstored.store is False
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(unstored.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete("resp_nope")


def test_delete_removes_a_response(tmp_path: Path) -> None:
    with scripted(tmp_path, [{"text": "x</think>one"}]) as (url, client):
        response = client.responses.create(model="glm", input="a")
        assert client.responses.retrieve(response.id).id == response.id
        client.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        answer = httpx.delete(f"{url}/v1/responses/{response.id}")
        assert answer.status_code == 404
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}
                ]
            },
            400,
            "input[0].content[0].type",
        ),
        ({"input": "x", "model": "nope"}, 404, "model"),
        ({"input": "x", "temperature": 7}, 400, "temperature"),
        ({"input": "x", "tools": [{"type": "teleport"}]}, 400, "tools[0].type"),
        ({"input": "x", "tool_choice": "required"}, 400, "tool_choice"),
        (
            {"input": [{"type": "reasoning", "summary": [], "encrypted_content": "glmgw1.AAAA"}]},
            400,
            "input[0].encrypted_content",
        ),
        ({"input": 5}, 400, "input"),
    ],
)
def test_bad_input_has_openai_error_shape(
    tmp_path: Path, body: dict[str, Any], status: int, param: str
) -> None:
    with scripted(tmp_path, [{"text": "x</think>y"}]) as (url, _):
        for stream in (False, True):
            answer = httpx.post(
                f"{url}/v1/responses", json={"model": "glm", "stream": stream, **body}, timeout=30
            )
            assert answer.status_code == status, answer.text
            error = answer.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["param"] == param
            assert error["message"]


def test_max_output_tokens_is_incomplete(tmp_path: Path) -> None:
    lines = [
        {"text": "thinking</think>a long answer", "chunk_size": 2, "finish_reason": "length"}
    ] * 2
    with scripted(tmp_path, lines) as (_, client):
        plain = client.responses.create(model="glm", input="x", max_output_tokens=5)
        events = list(
            client.responses.create(model="glm", input="x", max_output_tokens=5, stream=True)
        )
        assert events[-1].type == "response.incomplete"
        for response in (plain, events[-1].response):
            assert response.status == "incomplete"
            assert response.incomplete_details is not None
            assert response.incomplete_details.reason == "max_output_tokens"
        assert normalized(plain) == normalized(events[-1].response)
