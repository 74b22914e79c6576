"""Gateway settings: YAML file < ``GLM_GATEWAY_*`` environment < command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_MODEL_ID = "glm-4.7-flash"


class _Strict(BaseModel):
    # A typo in a config key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class LlamaCppBackendSettings(_Strict):
    type: Literal["llamacpp"] = "llamacpp"
    model: str = Field(description="Path to a .gguf file")
    n_ctx: int = Field(8192, ge=0, description="Context size; 0 uses the model's trained context")
    n_gpu_layers: int = Field(-1, description="Layers offloaded to the GPU; -1 offloads all")
    threads: int | None = Field(None, ge=1)
    n_batch: int = Field(512, ge=1)
    flash_attn: bool = False
    verbose: bool = False


class ScriptedBackendSettings(_Strict):
    type: Literal["scripted"] = "scripted"
    path: str = Field(description="JSONL file of canned raw outputs, one per request, cycling")
    context_length: int = Field(202_752, ge=1)


BackendSettings = Annotated[
    LlamaCppBackendSettings | ScriptedBackendSettings, Field(discriminator="type")
]


class ModelSettings(_Strict):
    id: str = DEFAULT_MODEL_ID
    aliases: list[str] = Field(default_factory=list)
    backend: BackendSettings

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model id must not be empty")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GLM_GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        yaml_file=None,
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    models: list[ModelSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.id, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} is used twice")
                seen.add(name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from an optional YAML file, the environment and explicit overrides."""
    if config_file is None:
        return Settings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with_file = type(
        "FileSettings",
        (Settings,),
        {"model_config": SettingsConfigDict(**{**Settings.model_config, "yaml_file": path})},
    )
    settings: Settings = with_file(**overrides)
    return Settings.model_validate(settings.model_dump())
