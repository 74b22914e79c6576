"""Claude model ids -> served models, and the settings that say how."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from backends.scripted import ScriptedBackend, ScriptedBackendSettings
from gateway.api.anthropic.names import served_name
from gateway.api.anthropic.settings import AnthropicSettings
from gateway.errors import ModelNotFoundError
from gateway.models import ModelRegistry
from gateway.settings import ModelSettings, load_settings


def registry() -> ModelRegistry:
    models = [
        ModelSettings(id="big", aliases=["big:fast"], backend=ScriptedBackendSettings(path="x")),
        ModelSettings(id="small", backend=ScriptedBackendSettings(path="x")),
    ]
    return ModelRegistry.from_settings(
        models, {"big": ScriptedBackend([]), "small": ScriptedBackend([])}
    )


TIERS = AnthropicSettings(
    default_model="big", model_map={"claude-haiku-*": "small", "*opus*": "big:fast"}
)


@pytest.mark.parametrize(
    ("requested", "settings", "expected"),
    [
        ("small", TIERS, "small"),  # served names are never mapped
        ("claude-sonnet-5-5", TIERS, "big"),
        ("claude-haiku-4-5-20251001", TIERS, "small"),
        ("Claude-Haiku-5-5", TIERS, "small"),  # patterns ignore case
        ("claude-opus-5-5", TIERS, "big:fast"),
        ("claude-sonnet-5-5", AnthropicSettings(), "big"),  # no default: the first model
    ],
)
def test_served_name(requested: str, settings: AnthropicSettings, expected: str) -> None:
    assert served_name(registry(), settings, requested) == expected


def test_unknown_names_are_404s() -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        served_name(registry(), TIERS, "gpt-5")
    broken = AnthropicSettings(default_model="gone")
    with pytest.raises(ModelNotFoundError, match="maps to 'gone'") as info:
        served_name(registry(), broken, "claude-sonnet-5-5")
    assert info.value.status_code == 404


def test_settings_from_yaml_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "models:\n"
        "  - id: glm-4.7-flash\n"
        "    backend: {type: scripted, path: x.jsonl}\n"
        "anthropic:\n"
        "  default_model: glm-4.7-flash\n"
        "  model_map:\n"
        "    'claude-haiku-*': 'glm-4.7-flash:general'\n",
        encoding="utf-8",
    )
    settings = load_settings(config)
    assert settings.anthropic.default_model == "glm-4.7-flash"
    assert settings.anthropic.model_map == {"claude-haiku-*": "glm-4.7-flash:general"}
    monkeypatch.setenv("GLM_GATEWAY_ANTHROPIC__DEFAULT_MODEL", "other")
    assert load_settings(config).anthropic.default_model == "other"


def test_settings_are_strict() -> None:
    with pytest.raises(ValidationError):
        AnthropicSettings.model_validate({"default_modle": "x"})
    with pytest.raises(ValidationError):
        AnthropicSettings.model_validate({"model_map": {"claude-*": " "}})
