"""The loop guard: repeated segments stop the generation, repeated calls stop the turn, and
ordinary output is left alone."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.loop_guard import RepetitionDetector, repeated_calls
from tests.gateway.agent.conftest import MODEL, RecordingBackend, gateway, scripted

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _detector() -> RepetitionDetector:
    return RepetitionDetector(min_repeats=8, min_chars=400, max_period=256)


def _feed(detector: RepetitionDetector, text: str, step: int = 7) -> int | None:
    for i in range(0, len(text), step):
        if detector.feed(text[i : i + step]):
            return i + step
    return None


def test_repetition_is_found_early() -> None:
    text = "Intro. " + "The user wants the weather. I will call it. " * 60
    stopped = _feed(_detector(), text)
    assert stopped is not None and stopped < 800


def test_ordinary_text_and_code_pass() -> None:
    prose = " ".join(f"item {i} costs {i * 7 % 13} euros" for i in range(300))
    assert _feed(_detector(), prose) is None
    code = "".join(f"    value_{i} = compute({i}, {i * i})\n" for i in range(200))
    assert _feed(_detector(), code) is None


def test_a_short_period_needs_the_minimum_span() -> None:
    detector = _detector()
    assert _feed(detector, "=" * 300) is None
    assert _feed(detector, "=" * 200) is not None


def _chat(client: Any, stream: bool, **kwargs: Any) -> tuple[str, str | None, int]:
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, **kwargs)
        done = raw.parse()
        message = done.choices[0].message
        calls = len(message.tool_calls or ())
        return (message.content or "", done.choices[0].finish_reason, calls), raw.headers
    content, finish, calls = "", None, 0
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            calls += sum(1 for c in choice.delta.tool_calls or () if c.id)
    return (content, finish, calls), None


def test_a_looping_generation_stops_with_length() -> None:
    loop = "ok</think>" + "I will check the weather again. " * 200
    backend = RecordingBackend(scripted(loop, loop, chunk=4))
    with gateway(backend) as (_, client):
        kwargs: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
        (content, finish, _), headers = _chat(client, False, **kwargs)
        streamed, _ = _chat(client, True, **kwargs)
    assert finish == "length"
    assert headers["x-glm-loop-guard"] == "repetition"
    assert len(content) < len(loop) // 4
    assert streamed == (content, finish, 0)


def _loop_messages(turns: int, city: str = "Paris") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather?"}]
    for i in range(turns):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": "error"})
    return messages


CALL = (
    "x</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>"
)


def test_the_same_call_again_and_again_is_stopped() -> None:
    backend = RecordingBackend(scripted(CALL, CALL, CALL))
    with gateway(backend) as (url, client):
        kwargs = {"messages": _loop_messages(3), "tools": TOOLS}
        (content, finish, calls), headers = _chat(client, False, **kwargs)
        assert (finish, calls) == ("length", 0)
        assert headers["x-glm-loop-guard"] == "repeated_tool_call"
        assert _chat(client, True, **kwargs)[0] == (content, "length", 0)
        # Two turns before it: the third call is allowed (the default is four in a row).
        (_, finish, calls), headers = _chat(client, False, messages=_loop_messages(2), tools=TOOLS)
        assert (finish, calls) == ("tool_calls", 1)
        assert "x-glm-loop-guard" not in headers
        metrics = __import__("httpx").get(f"{url}/metrics").text
    assert (
        'glm_gateway_loop_guard_stops_total{model="glm",reason="repeated_tool_call"} 2.0' in metrics
    )


def test_repeated_calls_reads_the_trailing_turns() -> None:
    assert repeated_calls(_loop_messages(3), 4) == (("get_weather", '{"city":"Paris"}'),)
    assert repeated_calls(_loop_messages(2), 4) is None
    mixed = _loop_messages(2) + _loop_messages(1, "Rome")[1:]
    assert repeated_calls(mixed, 3) is None
    assert repeated_calls([*_loop_messages(3), {"role": "user", "content": "again"}], 4) is None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    prefix=st.text(alphabet="ab c.", max_size=300),
    segment=st.text(alphabet="ab c.", min_size=1, max_size=300),
    repeats=st.integers(1, 12),
    suffix=st.text(alphabet="ab c.", max_size=40),
    min_repeats=st.integers(2, 10),
    min_chars=st.integers(16, 500),
    max_period=st.integers(1, 300),
)
def test_the_quick_probe_never_hides_a_repetition(
    prefix: str,
    segment: str,
    repeats: int,
    suffix: str,
    min_repeats: int,
    min_chars: int,
    max_period: int,
) -> None:
    """The ``str.find`` probe that skips the full pass holds wherever the full pass finds a
    repetition (a small alphabet makes near-repeats and accidental periods common)."""
    detector = RepetitionDetector(
        min_repeats=min_repeats, min_chars=min_chars, max_period=max_period, stride=1
    )
    text = prefix + segment * repeats + suffix
    for ch in text:
        detector._tail = (detector._tail + ch)[-detector.window :]
        if len(detector._tail) >= min_chars and detector.check() is not None:
            assert detector._may_repeat(), (detector._tail, detector.check())
