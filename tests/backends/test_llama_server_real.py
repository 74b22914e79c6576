"""The remote backend on a REAL llama-server (engine: llama-server), through the whole gateway.

llama-server is built from the llama.cpp that the pinned llama-cpp-python vendors
(``scripts/build-llama-server.sh``), so it runs the same kernels as the in-process backend.
It serves glm-tiny's GGUF with ``--special`` (special tokens as text); at temperature 0 the
reasoning, content and tool calls must equal the in-process llama.cpp backend's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from backends.remote import RemoteBackendSettings, RemoteReplicaSettings
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.backends.test_vllm_real import (
    CONVERSATIONS,
    MAX_MODEL_LEN,
    MODEL,
    assert_readme_tool_call,
    assert_same_output,
    reference,
)
from tests.conftest import GLM_TINY_GGUF, OpenAIClients, free_port, serve, unavailable

pytestmark = pytest.mark.engine

__all__ = ["reference"]  # the in-process llama.cpp gateway, a fixture shared with test_vllm_real

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-llama-server.sh"
SERVED_NAME = "glm-tiny"


def llama_server_bin() -> Path:
    configured = os.environ.get("LLAMA_SERVER_BIN")
    if configured:
        path = Path(configured)
    else:
        # Where the build script puts this machine's build (its cache key names the CPU).
        where = [str(BUILD_SCRIPT), "--path"]
        path = Path(subprocess.run(["bash", *where], capture_output=True, text=True).stdout.strip())
    if path.is_file():
        return path
    unavailable(
        f"no llama-server at {path} (run scripts/build-llama-server.sh, or set LLAMA_SERVER_BIN)"
    )


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = llama_server_bin()
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "llama-server.log"
    command = [
        str(binary),
        "-m",
        str(GLM_TINY_GGUF),
        "--alias",
        SERVED_NAME,
        # GLM's reasoning and tool-call tags are special tokens: without this they are dropped.
        "--special",
        "-c",
        str(MAX_MODEL_LEN),
        "-np",
        "1",
        "-t",
        "1",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-webui",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama-server exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server was not healthy in time:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def gateway(llama_server: str) -> Iterator[str]:
    settings = Settings(
        models=[
            ModelSettings(
                id=MODEL,
                backend=RemoteBackendSettings(
                    engine="llama-server",
                    model=SERVED_NAME,
                    replicas=[RemoteReplicaSettings(url=llama_server)],
                    read_timeout=120,
                ),
            )
        ]
    )
    with serve(create_app(settings), ready_timeout=60) as url:
        yield url


sdk = OpenAIClients()
_close_sdk_clients = sdk.closed_after_module()


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_same_output_as_in_process_llamacpp(gateway: str, reference: str, name: str) -> None:
    assert_same_output(sdk, gateway, reference, name)


def test_tags_survive_and_tool_call_parses(gateway: str) -> None:
    # glm-tiny's README output: <think>, </think> and <tool_call> came back as text.
    assert_readme_tool_call(sdk, gateway)


def test_client_stop_string_is_named(gateway: str, reference: str) -> None:
    """llama-server does not say which stop string matched; the backend matches the client's
    itself, so the Anthropic API still reports it, as the in-process backend does."""
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "temperature": 0,
        "stop_sequences": ["Paris"],
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    ours = httpx.post(f"{gateway}/v1/messages", json=body, timeout=60).json()
    theirs = httpx.post(f"{reference}/v1/messages", json=body, timeout=60).json()
    assert ours["stop_reason"] == theirs["stop_reason"] == "stop_sequence"
    assert ours["stop_sequence"] == theirs["stop_sequence"] == "Paris"
    assert ours["content"] == theirs["content"]
    # The prompt's length, however much of it each engine had cached.
    assert prompt_tokens(ours) == prompt_tokens(theirs) == 12


def prompt_tokens(message: dict[str, Any]) -> int:
    usage = message["usage"]
    return int(usage["input_tokens"] + (usage.get("cache_read_input_tokens") or 0))


def test_grammar_and_errors(gateway: str) -> None:
    reply = sdk(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
        tools=CONVERSATIONS["weather-call"]["tools"],
        tool_choice={"type": "function", "function": {"name": "list_files"}},
        temperature=0,
        max_tokens=200,
    )
    assert [c.function.name for c in reply.choices[0].message.tool_calls or []] == ["list_files"]
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=4
        )
    assert err.value.code == "context_length_exceeded"


def test_context_length_and_token_count(gateway: str, reference: str) -> None:
    card = httpx.get(f"{gateway}/v1/models/{MODEL}", timeout=10).json()
    assert card["context_length"] == MAX_MODEL_LEN
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What's the weather?"}]}
    ours = httpx.post(f"{gateway}/v1/messages/count_tokens", json=body, timeout=30).json()
    theirs = httpx.post(f"{reference}/v1/messages/count_tokens", json=body, timeout=30).json()
    assert ours == theirs
