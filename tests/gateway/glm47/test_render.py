from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InvalidRequestError
from gateway.glm47.render import render_prompt

CASES_PATH = Path(__file__).resolve().parents[2] / "fixtures" / "glm47" / "render_cases.json"
CASES: list[dict[str, Any]] = json.loads(CASES_PATH.read_text(encoding="utf-8"))

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _call(arguments: Any, name: str = "get_weather") -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_fixture_has_all_cases() -> None:
    assert len(CASES) == 14
    assert len({case["id"] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_render_case_is_byte_identical(case: dict[str, Any]) -> None:
    kwargs = case.get("chat_template_kwargs", {})
    prompt = render_prompt(
        case["messages"],
        tools=case.get("tools"),
        enable_thinking=kwargs.get("enable_thinking", True),
        clear_thinking=kwargs.get("clear_thinking", True),
        add_generation_prompt=case.get("add_generation_prompt", True),
    )
    assert prompt == case["expected_prompt"]


def test_developer_renders_like_system() -> None:
    as_system = render_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    as_developer = render_prompt(
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert as_developer == as_system
    assert as_developer == "[gMASK]<sop><|system|>Be brief.<|user|>Hi<|assistant|><think>"


def test_unknown_roles_are_dropped() -> None:
    prompt = render_prompt([{"role": "critic", "content": "X"}, {"role": "user", "content": "Hi"}])
    assert prompt == "[gMASK]<sop><|user|>Hi<|assistant|><think>"


def test_content_parts_keep_only_text_without_separator() -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": [{"type": "text", "text": "S1"}, {"type": "text", "text": "S2"}],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a "},
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                {"type": "text", "text": "b"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": " answer "}]},
    ]
    prompt = render_prompt(messages, add_generation_prompt=False)
    assert prompt == "[gMASK]<sop><|system|>S1S2<|user|>a b<|assistant|></think>answer"


def test_text_part_without_string_text_is_rejected() -> None:
    with pytest.raises(InvalidRequestError) as info:
        render_prompt([{"role": "user", "content": [{"type": "text", "text": 3}]}])
    assert info.value.param == "messages[0].content[0].text"


def test_dict_arguments_render_like_json_string_arguments() -> None:
    arguments = {"city": "Paris", "days": 3, "opts": {"unit": "C"}, "flag": False, "x": None}
    expected_call = (
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "<arg_key>days</arg_key><arg_value>3</arg_value>"
        '<arg_key>opts</arg_key><arg_value>{"unit": "C"}</arg_value>'
        "<arg_key>flag</arg_key><arg_value>false</arg_value>"
        "<arg_key>x</arg_key><arg_value>null</arg_value></tool_call>"
    )
    prompts = [
        render_prompt(
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "tool_calls": [_call(args)]},
            ],
            add_generation_prompt=False,
        )
        for args in (arguments, json.dumps(arguments))
    ]
    assert prompts[0] == prompts[1]
    assert prompts[0] == "[gMASK]<sop><|user|>q<|assistant|></think>" + expected_call


@pytest.mark.parametrize("arguments", ["", "   \n", None, {}, "{}"])
def test_empty_arguments_render_a_bare_call(arguments: Any) -> None:
    prompt = render_prompt(
        [{"role": "assistant", "content": "", "tool_calls": [_call(arguments, "ls")]}],
        add_generation_prompt=False,
    )
    assert prompt == "[gMASK]<sop><|assistant|></think><tool_call>ls</tool_call>"


def test_string_argument_is_written_raw() -> None:
    prompt = render_prompt(
        [{"role": "assistant", "tool_calls": [_call('{"s": "a\\"b\\n<c> é"}')]}],
        add_generation_prompt=False,
    )
    assert prompt.endswith('<arg_value>a"b\n<c> é</arg_value></tool_call>')


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ('{"city": ', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"Paris"', "must be a JSON object"),
        ("null", "must be a JSON object"),
        (42, "must be a JSON object"),
    ],
)
def test_invalid_arguments_raise_with_param(arguments: Any, fragment: str) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [_call("{}")]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [_call('{"city": "Rome"}'), _call(arguments)],
        },
    ]
    with pytest.raises(InvalidRequestError) as info:
        render_prompt(messages, tools=[WEATHER_TOOL])
    assert info.value.param == "messages[3].tool_calls[1].function.arguments"
    assert fragment in info.value.message
    assert info.value.status_code == 400


def test_tool_call_without_name_is_rejected() -> None:
    call = {"id": "c1", "type": "function", "function": {"arguments": "{}"}}
    with pytest.raises(InvalidRequestError) as info:
        render_prompt([{"role": "assistant", "content": "", "tool_calls": [call]}])
    assert info.value.param == "messages[0].tool_calls[0].function.name"


def test_reasoning_is_an_alias_of_reasoning_content() -> None:
    def render(field: str) -> str:
        return render_prompt(
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", field: " R "}],
            add_generation_prompt=False,
        )

    assert render("reasoning") == render("reasoning_content")
    assert render("reasoning") == "[gMASK]<sop><|user|>Q<|assistant|><think>R</think>A"


def test_reasoning_content_takes_precedence_over_reasoning() -> None:
    prompt = render_prompt(
        [{"role": "assistant", "content": "A", "reasoning_content": "RC", "reasoning": "R"}],
        add_generation_prompt=False,
    )
    assert prompt == "[gMASK]<sop><|assistant|><think>RC</think>A"


def test_string_reasoning_field_disables_inline_think_split() -> None:
    # The template only splits <think> out of the content when no reasoning string was given.
    prompt = render_prompt(
        [{"role": "assistant", "content": "<think>x</think>A", "reasoning_content": ""}],
        add_generation_prompt=False,
    )
    assert prompt == "[gMASK]<sop><|assistant|></think><think>x</think>A"


def test_inline_think_is_removed_from_content_even_when_reasoning_is_hidden() -> None:
    prompt = render_prompt(
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "<think>old</think>\nA1"},
            {"role": "user", "content": "Q2"},
        ]
    )
    assert prompt == "[gMASK]<sop><|user|>Q1<|assistant|></think>A1<|user|>Q2<|assistant|><think>"


def test_whitespace_only_reasoning_still_opens_a_think_block() -> None:
    # The template tests the unstripped reasoning, so "  " is truthy and renders <think></think>.
    prompt = render_prompt(
        [{"role": "assistant", "content": "A", "reasoning_content": " \n "}],
        add_generation_prompt=False,
    )
    assert prompt == "[gMASK]<sop><|assistant|><think></think>A"


def test_reasoning_shown_for_every_turn_after_last_user_message() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "Q2"},
        {"role": "system", "content": "S"},
        {"role": "assistant", "content": "", "reasoning_content": "R2", "tool_calls": [_call("")]},
        {"role": "tool", "content": "t"},
        {"role": "assistant", "content": "A3", "reasoning_content": "R3"},
    ]
    prompt = render_prompt(messages, add_generation_prompt=False)
    assert prompt == (
        "[gMASK]<sop><|user|>Q1<|assistant|></think>A1<|user|>Q2<|system|>S"
        "<|assistant|><think>R2</think><tool_call>get_weather</tool_call>"
        "<|observation|><tool_response>t</tool_response>"
        "<|assistant|><think>R3</think>A3"
    )


def test_without_user_message_every_turn_shows_reasoning() -> None:
    prompt = render_prompt(
        [
            {"role": "system", "content": "S"},
            {"role": "assistant", "content": "A", "reasoning_content": "R"},
        ],
        add_generation_prompt=False,
    )
    assert prompt == "[gMASK]<sop><|system|>S<|assistant|><think>R</think>A"


def test_tool_results_separated_by_another_message_get_their_own_observation() -> None:
    prompt = render_prompt(
        [
            {"role": "tool", "content": "a"},
            {"role": "tool", "content": "b"},
            {"role": "system", "content": "S"},
            {"role": "tool", "content": [{"type": "text", "text": "c"}]},
        ],
        add_generation_prompt=False,
    )
    assert prompt == (
        "[gMASK]<sop><|observation|><tool_response>a</tool_response>"
        "<tool_response>b</tool_response><|system|>S"
        "<|observation|><tool_response>c</tool_response>"
    )


def test_tools_with_non_ascii_are_not_escaped() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "wetter",
            "description": "Wetter für eine Stadt — 天气 🌦",
            "parameters": {"type": "object", "properties": {"stadt": {"type": "string"}}},
        },
    }
    prompt = render_prompt([{"role": "user", "content": "Hallo"}], tools=[tool])
    line = json.dumps(tool, ensure_ascii=False)
    assert "\n" + line + "\n</tools>" in prompt
    assert "Wetter für eine Stadt — 天气 🌦" in prompt
    assert "\\u" not in prompt


def test_tools_keep_key_order_and_one_line_each() -> None:
    first = {"function": {"parameters": {}, "name": "z"}, "type": "function"}
    second = {"type": "function", "function": {"name": "a", "parameters": {}}}
    prompt = render_prompt([{"role": "user", "content": "x"}], tools=[first, second])
    assert (
        '<tools>\n{"function": {"parameters": {}, "name": "z"}, "type": "function"}\n'
        '{"type": "function", "function": {"name": "a", "parameters": {}}}\n</tools>'
    ) in prompt


def test_empty_tools_list_renders_no_tools_block() -> None:
    assert render_prompt([{"role": "user", "content": "Hi"}], tools=[]) == render_prompt(
        [{"role": "user", "content": "Hi"}]
    )
    assert "<|system|>" not in render_prompt([{"role": "user", "content": "Hi"}], tools=[])


def test_large_conversation_renders_in_linear_time() -> None:
    # 40,000 messages: linear work takes milliseconds; re-scanning the history per message (to find
    # the last user turn, or to rebuild the string) would take minutes, so the bound is generous.
    n = 20_000
    messages: list[dict[str, Any]] = []
    for i in range(n):
        messages.append({"role": "user", "content": f"q{i}"})
        messages.append({"role": "assistant", "content": "<think>r</think>" * 3 + "a"})
    start = time.perf_counter()
    prompt = render_prompt(messages)
    elapsed = time.perf_counter() - start
    assert prompt.count("<|user|>") == n
    assert prompt.count("<think>r</think>") == 1
    assert prompt.endswith("<|user|>q19999<|assistant|><think>r</think>a<|assistant|><think>")
    assert elapsed < 2.0
