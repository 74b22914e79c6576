"""How the bench starts each server it measures (all on 127.0.0.1, on free ports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .common import (
    LITELLM_VENV,
    LLAMA_SERVER_VENV,
    PROJECT_PYTHON,
    RESULTS,
    VLLM_VENV,
    Server,
    Servers,
    free_port,
    glm_tiny,
)

CONFIGS = RESULTS / "configs"
# Sent by the bench client on every request; both proxies are configured to require it.
API_KEY = "sk-bench"


def write_config(name: str, data: dict[str, Any]) -> Path:
    CONFIGS.mkdir(parents=True, exist_ok=True)
    path = CONFIGS / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stub(servers: Servers, name: str = "stub") -> Server:
    port = free_port()
    return servers.start(
        name,
        [str(PROJECT_PYTHON), "-m", "bench.stub_upstream", "--port", str(port)],
        port=port,
        ready_path="/health",
        timeout=30,
    )


def gateway(
    servers: Servers,
    name: str,
    models: list[dict[str, Any]],
    *,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    **settings: Any,
) -> Server:
    """``glm-gateway serve --config FILE`` with the default settings but for ``models``."""
    port = free_port()
    config = write_config(name, {"host": "127.0.0.1", "port": port, **settings, "models": models})
    return servers.start(
        name,
        [str(PROJECT_PYTHON), "-m", "gateway", "serve", "--config", str(config)],
        port=port,
        ready_path="/ready",
        timeout=timeout,
        env=env,
    )


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def litellm(servers: Servers, upstream: Server, name: str = "litellm") -> Server:
    """The LiteLLM proxy, as documented: one model entry pointing at the stub.

    Only ``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set: this machine is offline, and without it
    LiteLLM tries to download its model price list at start-up (retries, then falls back to the
    same local copy). A master key (LiteLLM refuses to start without one), no database, one
    worker: LiteLLM's defaults otherwise.
    """
    port = free_port()
    config = write_config(
        name,
        {
            "model_list": [
                {
                    "model_name": "stub",
                    "litellm_params": {
                        "model": "openai/stub",
                        "api_base": f"{upstream.base}/v1",
                        "api_key": "sk-stub",
                    },
                }
            ],
            # LiteLLM refuses to start without one; our gateway gets the same key (api_keys).
            "general_settings": {"master_key": API_KEY},
        },
    )
    return servers.start(
        name,
        [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        port=port,
        ready_path="/health/liveliness",
        timeout=180,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
    )


def llama_server_available() -> bool:
    python = LLAMA_SERVER_VENV / "bin" / "python"
    return python.exists()


def llama_server(
    servers: Servers,
    model: Path,
    *,
    n_ctx: int,
    n_threads: int,
    n_threads_batch: int,
    seed: int,
    name: str = "llama-server",
    extra: tuple[str, ...] = (),
) -> Server:
    """``python -m llama_cpp.server`` with its defaults but for context, threads and seed."""
    port = free_port()
    return servers.start(
        name,
        [
            str(LLAMA_SERVER_VENV / "bin" / "python"),
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            str(n_threads),
            "--n_threads_batch",
            str(n_threads_batch),
            "--seed",
            str(seed),
            "--verbose",
            "False",
            *extra,
        ],
        port=port,
        ready_path="/v1/models",
        timeout=120,
    )


def vllm(
    servers: Servers,
    name: str,
    *,
    timeout: float,
    env: dict[str, str],
    extra: tuple[str, ...] = (),
) -> Server:
    """vLLM's OpenAI server (scripts/setup-vllm.sh's venv) on glm-tiny, fp32, 2048 tokens."""
    port = free_port()
    return servers.start(
        name,
        [
            str(VLLM_VENV / "bin" / "python"),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(glm_tiny()),
            "--served-model-name",
            "glm-tiny",
            "--max-model-len",
            "2048",
            "--dtype",
            "float32",
            *extra,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        port=port,
        ready_path="/v1/models",
        timeout=timeout,
        env=env,
    )
