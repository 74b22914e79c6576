"""``glm-gateway``: the command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any, cast

import pydantic
import yaml

from backends.registry import backend_type, backend_types

from . import __version__
from .settings import DEFAULT_MODEL_ID, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-gateway", description="OpenAI-compatible gateway for GLM-4.7-Flash."
    )
    parser.add_argument("--version", action="version", version=f"glm-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP server")
    source = serve.add_argument_group("model (one of --model or --config)")
    source.add_argument("--config", help="YAML settings file")
    source.add_argument("--model", help="a .gguf file (llamacpp) or a .jsonl script (scripted)")
    source.add_argument(
        "--backend",
        choices=[spec.name for spec in backend_types() if spec.model_flag is not None],
        help="backend for --model (default: by file extension)",
    )
    source.add_argument(
        "--model-id", default=None, help=f"served name (default {DEFAULT_MODEL_ID})"
    )
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    engine = serve.add_argument_group("llama.cpp engine")
    engine.add_argument(
        "--n-ctx",
        type=int,
        help="context size (default: what fits in the memory left after the weights, capped "
        "by the model's; 0 = the model's)",
    )
    engine.add_argument("--n-gpu-layers", type=int, help="layers on the GPU (default -1 = all)")
    engine.add_argument("--threads", type=int, help="CPU threads (default: llama.cpp's choice)")
    engine.add_argument(
        "--threads-batch", type=int, help="prompt-processing threads (default: --threads)"
    )
    engine.add_argument(
        "--parallel", type=int, help="sequences decoded together, one shared KV cache (default 4)"
    )
    engine.add_argument("--batch-size", dest="n_batch", type=int, help="logical batch (2048)")
    engine.add_argument("--ubatch-size", dest="n_ubatch", type=int, help="physical batch (512)")
    engine.add_argument(
        "--prefill-budget",
        type=int,
        help="prompt tokens a step reads while other sequences decode (default: ubatch size)",
    )
    engine.add_argument("--flash-attn", choices=("auto", "on", "off"), help="default auto")
    engine.add_argument(
        "--repack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="repack weights for llama.cpp's faster CPU kernels (default on, but off for a "
        "llama.cpp built with its AMX kernels, which crash on some machines)",
    )
    engine.add_argument(
        "--cache-type-k",
        choices=("f16", "bf16", "f32", "q8_0", "q4_0"),
        help="KV cache type (V follows K; quantized needs flash attention); default f16",
    )
    engine.add_argument(
        "--cache-ram",
        dest="cache_ram_mib",
        type=int,
        help="MiB of host RAM for evicted sequences' KV states (default 8192; 0 = off)",
    )
    engine.add_argument(
        "--cache-idle",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="move idle conversations' caches to host RAM when a request starts (default on)",
    )
    engine.add_argument(
        "--stream-interval",
        dest="stream_interval_ms",
        type=int,
        help="ms of streamed text held back to go out with the next tokens (default 40; "
        "0 = every token alone)",
    )
    serve.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default=None
    )
    return parser


# Engine flags, passed on to backends whose settings have the field.
_ENGINE_FLAGS = (
    "n_ctx",
    "n_gpu_layers",
    "threads",
    "threads_batch",
    "parallel",
    "n_batch",
    "n_ubatch",
    "prefill_budget",
    "flash_attn",
    "repack",
    "cache_type_k",
    "cache_ram_mib",
    "cache_idle",
    "stream_interval_ms",
)


def _backend_for(model: str) -> str:
    """The engine for ``--model`` by its suffix; llama.cpp (GGUF, Hugging Face specs) else."""
    for spec in backend_types():
        if spec.model_flag is not None and model.endswith(spec.suffixes):
            return spec.name
    return "llamacpp"


def _model_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    spec = backend_type(args.backend or _backend_for(args.model))
    assert spec.model_flag is not None
    options: dict[str, Any] = {"type": spec.name, spec.model_flag: args.model}
    for key in _ENGINE_FLAGS:
        value = getattr(args, key)
        if value is not None and key in spec.settings.model_fields:
            options[key] = value
    return {"id": args.model_id or DEFAULT_MODEL_ID, "backend": options}


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("host", "port", "log_level")
        if getattr(args, key) is not None
    }
    if args.model is not None:
        overrides["models"] = [_model_from_flags(args)]
    settings = load_settings(args.config, **overrides)
    if not settings.models:
        raise ValueError("no model to serve: give --model PATH.gguf or --config FILE")
    return settings


def _format_validation(exc: pydantic.ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {key}: {err['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        from .app import create_app

        # Builds the backends; a Hugging Face model spec is resolved (downloaded) here.
        app = create_app(settings)
    except pydantic.ValidationError as exc:
        print(f"glm-gateway: {_format_validation(exc)}", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        print(f"glm-gateway: invalid YAML in {args.config}: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"glm-gateway: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with the
    # handlers that were in place before it: make that a clean exit, not a signal death.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Annotated int by uvicorn, but used as an asyncio timeout: fractions work.
        timeout_graceful_shutdown=cast(int, settings.shutdown_grace),
        timeout_keep_alive=cast(int, settings.http_keepalive_timeout),
        # The gateway writes its own access log line per request (gateway/middleware.py).
        access_log=False,
        loop=settings.server_loop,
        http=settings.server_http,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
