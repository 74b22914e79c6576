"""Configuration: YAML < environment < flags, and every mistake reported with its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.settings import load_settings
from tests.conftest import GLM_TINY_GGUF

GOOD = """
host: 0.0.0.0
port: 9001
models:
  - id: glm-4.7-flash
    aliases: [glm, {name: coder, route: tools}]
    backend: {type: scripted, path: demo.jsonl}
    routes:
      tools: {temperature: 0.6, chat_template_kwargs: {clear_thinking: false}}
"""

# (YAML text, text the error must contain: the key path and the reason)
BROKEN: list[tuple[str, str, list[str]]] = [
    ("unknown top-level key", "prot: 1\n", ["prot", "Extra inputs"]),
    ("port out of range", "port: 70000\n", ["port", "65535"]),
    ("port not a number", "port: eighty\n", ["port", "integer"]),
    (
        "unknown backend type",
        "models: [{id: m, backend: {type: tgi, model: x}}]\n",
        ["models.0.backend", "tgi"],
    ),
    (
        "missing backend",
        "models: [{id: m}]\n",
        ["models.0.backend", "Field required"],
    ),
    (
        "typo in a backend option",
        "models: [{id: m, backend: {type: llamacpp, model: x.gguf, n_ctxx: 5}}]\n",
        ["models.0.backend.llamacpp.n_ctxx", "Extra inputs"],
    ),
    (
        "negative context",
        "models: [{id: m, backend: {type: llamacpp, model: x.gguf, n_ctx: -1}}]\n",
        ["models.0.backend.llamacpp.n_ctx", "greater than or equal to 0"],
    ),
    (
        "bad route value",
        "models: [{id: m, backend: {type: scripted, path: a}, routes: {tools: {top_p: 3}}}]\n",
        ["models.0.routes.tools.top_p", "less than or equal to 1"],
    ),
    (
        "unknown route field",
        "models: [{id: m, backend: {type: scripted, path: a}, routes: {tools: {temp: 1}}}]\n",
        ["models.0.routes.tools.temp", "Extra inputs"],
    ),
    (
        "alias pins an unknown route",
        "models: [{id: m, backend: {type: scripted, path: a},"
        " aliases: [{name: x, route: fast}]}]\n",
        ["models.0", "route 'fast'"],
    ),
    (
        "duplicate names",
        "models: [{id: m, backend: {type: scripted, path: a}},"
        " {id: n, aliases: [m], backend: {type: scripted, path: b}}]\n",
        ["'m' is used twice"],
    ),
    (
        "empty model id",
        "models: [{id: ' ', backend: {type: scripted, path: a}}]\n",
        ["models.0.id"],
    ),
    ("not a mapping", "- just\n- a list\n", ["mapping"]),
    ("invalid YAML", "models: [\n", ["YAML"]),
]


def test_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    settings = load_settings(path)
    assert settings.port == 9001
    model = settings.models[0]
    assert [a.name for a in model.alias_settings()] == ["glm", "coder"]
    assert model.routes["tools"].chat_template_kwargs.clear_thinking is False


def test_environment_beats_file_and_flags_beat_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("GLM_GATEWAY_PORT", "9100")
    assert load_settings(path).port == 9100
    assert load_settings(path, port=9200).port == 9200


@pytest.mark.parametrize(
    ("text", "needles"), [row[1:] for row in BROKEN], ids=[row[0] for row in BROKEN]
)
def test_broken_config_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    code = main(["serve", "--config", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", "/nonexistent/gateway.yaml"]) == 2
    assert "/nonexistent/gateway.yaml" in capsys.readouterr().err


def test_no_model_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "--model" in capsys.readouterr().err


def test_console_script_exits_nonzero_on_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("port: 70000\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "port" in result.stderr


def test_engine_flags_reach_the_llamacpp_settings() -> None:
    from gateway.cli import _parser, settings_from_args

    args = _parser().parse_args(
        ["serve", "--model", str(GLM_TINY_GGUF), "--cache-ram", "512", "--parallel", "2"]
    )
    backend = settings_from_args(args).models[0].backend
    assert backend.model_dump()["cache_ram_mib"] == 512
    assert backend.model_dump()["parallel"] == 2
    # Unset flags leave the settings' defaults.
    assert backend.model_dump()["cache_idle"] is True
    assert backend.model_dump()["stream_interval_ms"] == 40
    assert backend.model_dump()["repack"] is None
    flags = ["--no-cache-idle", "--stream-interval", "0", "--no-repack"]
    args = _parser().parse_args(["serve", "--model", str(GLM_TINY_GGUF), *flags])
    backend = settings_from_args(args).models[0].backend
    assert backend.model_dump()["cache_idle"] is False
    assert backend.model_dump()["stream_interval_ms"] == 0
    assert backend.model_dump()["repack"] is False
