"""The grammars on the real engine: llama.cpp compiles every one, and a model it constrains
writes calls that the parser reads back valid against the tool's schema, ``$ref``s included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.glm47.events import MessageAccumulator
from gateway.glm47.grammar import json_grammar, tool_call_grammar
from gateway.glm47.parser import GLM47Parser
from tests.gateway.glm47.test_grammar import PAINT, TOOLS

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def llm(smollm_path: Path) -> Iterator[Any]:
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(smollm_path), n_ctx=1024, n_threads=2, verbose=False)
    yield model
    model.close()


def grammars() -> Iterator[str]:
    for thinking in (True, False):
        yield tool_call_grammar(TOOLS, thinking=thinking)
        yield tool_call_grammar(TOOLS[1:2], thinking=thinking, parallel=False)
        yield json_grammar(PAINT, thinking=thinking)
        yield json_grammar(PAINT["$defs"]["Node"] | {"$defs": PAINT["$defs"]}, thinking=thinking)


def test_llama_cpp_compiles_every_grammar(llm: Any) -> None:
    import llama_cpp

    # (LlamaGrammar.from_string only keeps the text: the sampler is where llama.cpp parses it.)
    for grammar in grammars():
        sampler = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar.encode("utf-8"), b"root"
        )
        assert sampler, grammar
        llama_cpp.llama_sampler_free(sampler)


# A call the grammar keeps short (a CPU generation is slow), with a $ref in each typing path.
PICK: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "pick",
        "parameters": {
            "$defs": PAINT["$defs"],
            "type": "object",
            "properties": {
                "color": {"$ref": "#/$defs/Color"},
                "level": {"$ref": "#/$defs/Level"},
                "shade": {"anyOf": [{"$ref": "#/$defs/Color"}, {"type": "null"}]},
            },
            "required": ["color", "level", "shade"],
        },
    },
}


def test_constrained_generation_parses_back_valid(llm: Any) -> None:
    import llama_cpp

    grammar = llama_cpp.LlamaGrammar.from_string(
        tool_call_grammar([PICK], thinking=False, parallel=False), verbose=False
    )
    out = llm.create_completion(
        "Pick a color.\n", grammar=grammar, max_tokens=160, temperature=1.0, seed=0
    )
    text = out["choices"][0]["text"]
    # (The grammar ends at </tool_call>; the engine may spend the rest of the limit on empty
    # pieces after it, so the finish reason says nothing here: the call must be complete.)
    parser = GLM47Parser(thinking=False, tools=[PICK])
    acc = MessageAccumulator()
    for event in parser.feed(text) + parser.finish():
        acc.add(event)
    calls = acc.result().tool_calls
    assert [c.name for c in calls] == ["pick"], text
    jsonschema.validate(json.loads(calls[0].arguments), PICK["function"]["parameters"])
