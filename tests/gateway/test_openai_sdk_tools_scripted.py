"""Tool calls through the real ``openai`` SDK on the scripted backend: the SDK's own stream
helpers must assemble exactly the non-streaming message, whatever the chunking."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from backends.scripted import ScriptedBackendSettings
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import FIXTURES, serve

TOOLS: list[dict[str, Any]] = json.loads(
    (FIXTURES / "glm47" / "parse_cases.json").read_text(encoding="utf-8")
)[6]["tools"]

OUTPUTS: dict[str, str] = {
    "reasoning-and-call": "Need weather.</think><tool_call>get_weather<arg_key>city</arg_key>"
    "<arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call>",
    "content-and-two-calls": "ok</think>Let me check both.<tool_call>get_weather<arg_key>city"
    "</arg_key><arg_value>Paris</arg_value></tool_call><tool_call>get_weather<arg_key>city"
    "</arg_key><arg_value>Rome</arg_value></tool_call>",
    "zero-argument": "x</think><tool_call>list_files</tool_call>",
    "unicode": "想一想</think>北京天气 🌤<tool_call>get_weather<arg_key>city</arg_key>"
    "<arg_value>北京 — München</arg_value></tool_call>",
    "typed-values": "x</think><tool_call>search<arg_key>q</arg_key><arg_value>true</arg_value>"
    '<arg_key>opts</arg_key><arg_value>{"unit": "C", "n": [1, 2]}</arg_value><arg_key>flag'
    "</arg_key><arg_value>True</arg_value><arg_key>maybe</arg_key><arg_value>123</arg_value>"
    "</tool_call>",
    "file-body": "x</think><tool_call>write_file<arg_key>path</arg_key><arg_value>a.html"
    '</arg_value><arg_key>content</arg_key><arg_value><div class="x">\n  Tom\'s "q" & \\n <'
    "</arg_value></tool_call>",
}
CHUNK_SIZES = (1, 3, 1000)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    # For every output and chunk size: once for the plain request, once for the stream.
    lines = [
        json.dumps({"text": text, "chunk_size": size})
        for text in OUTPUTS.values()
        for size in CHUNK_SIZES
        for _ in range(2)
    ]
    script: Path = tmp_path_factory.mktemp("tools") / "tools.jsonl"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = Settings(
        models=[ModelSettings(id="glm", backend=ScriptedBackendSettings(path=str(script)))]
    )
    with (
        serve(create_app(settings)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as c,
    ):
        yield c


def summary(message: Any) -> dict[str, Any]:
    extra = message.model_extra or {}
    return {
        "content": message.content,
        "reasoning_content": extra.get("reasoning_content"),
        "tool_calls": [
            (c.type, c.function.name, c.function.arguments) for c in message.tool_calls or []
        ],
    }


def test_streamed_tool_calls_equal_non_streaming(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "glm",
        "messages": [{"role": "user", "content": "go"}],
        "tools": TOOLS,
    }
    for name, _text in OUTPUTS.items():
        for size in CHUNK_SIZES:
            whole = client.chat.completions.create(**kwargs)
            with client.chat.completions.stream(**kwargs) as stream:
                deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
                final = stream.get_final_completion()
            label = f"{name} / chunk {size}"
            assert summary(final.choices[0].message) == summary(whole.choices[0].message), label
            assert final.choices[0].finish_reason == whole.choices[0].finish_reason, label
            assert whole.choices[0].finish_reason == "tool_calls", label
            ids = [c.id for c in final.choices[0].message.tool_calls or []]
            assert all(i.startswith("call_") for i in ids) and len(set(ids)) == len(ids), label
            if size == 1 and name == "file-body":
                # A string value streams as it is generated, in many fragments.
                assert len(deltas) > 10, label
            for call in whole.choices[0].message.tool_calls or []:
                json.loads(call.function.arguments)


def test_expected_values(client: openai.OpenAI) -> None:
    # The script is consumed in order; this test runs after the one above, so start a new
    # cycle: the first entry again.
    kwargs: dict[str, Any] = {
        "model": "glm",
        "messages": [{"role": "user", "content": "go"}],
        "tools": TOOLS,
    }
    seen = {}
    for name in OUTPUTS:
        for _ in range(len(CHUNK_SIZES) * 2):
            seen[name] = summary(client.chat.completions.create(**kwargs).choices[0].message)
    assert seen["reasoning-and-call"] == {
        "content": None,
        "reasoning_content": "Need weather.",
        "tool_calls": [("function", "get_weather", '{"city": "Paris", "days": 3}')],
    }
    assert seen["content-and-two-calls"]["content"] == "Let me check both."
    assert [c[2] for c in seen["content-and-two-calls"]["tool_calls"]] == [
        '{"city": "Paris"}',
        '{"city": "Rome"}',
    ]
    assert seen["zero-argument"]["tool_calls"] == [("function", "list_files", "{}")]
    assert seen["unicode"]["content"] == "北京天气 🌤"
    assert seen["unicode"]["tool_calls"] == [
        ("function", "get_weather", '{"city": "北京 — München"}')
    ]
    assert json.loads(seen["typed-values"]["tool_calls"][0][2]) == {
        "q": "true",
        "opts": {"unit": "C", "n": [1, 2]},
        "flag": True,
        "maybe": "123",
    }
    assert json.loads(seen["file-body"]["tool_calls"][0][2])["content"] == (
        '<div class="x">\n  Tom\'s "q" & \\n <'
    )
