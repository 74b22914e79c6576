"""Gateway settings: YAML file < ``GLM_GATEWAY_*`` environment < command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from backends.registry import backend_types
from backends.sampling import (
    MaxTokens,
    MinP,
    Penalty,
    RepeatPenalty,
    Seed,
    Temperature,
    TopK,
    TopP,
)
from backends.settings_base import BackendSettingsBase

from .api.anthropic.settings import AnthropicSettings
from .api.openai_responses.settings import ResponsesSettings
from .route_defaults import BUILTIN_ROUTES

DEFAULT_MODEL_ID = "glm-4.7-flash"


class _Strict(BaseModel):
    # A typo in a config key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


def _backend_union() -> Any:
    """The discriminated union of every registered backend's settings (``type`` picks one)."""
    types = tuple(spec.settings for spec in backend_types())
    return Annotated[Union[types], Field(discriminator="type")]  # noqa: UP007


if TYPE_CHECKING:
    BackendSettings = BackendSettingsBase
else:
    BackendSettings = _backend_union()


class SamplingSettings(_Strict):
    """Sampling fields a route may set; unset fields leave the layer below in force."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repeat_penalty: RepeatPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: Seed | None = None
    max_tokens: MaxTokens | None = None

    def layer(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class TemplateSettings(_Strict):
    enable_thinking: bool | None = None
    clear_thinking: bool | None = None


class LoopGuardSettings(_Strict):
    """Stops generations that repeat themselves (see ``gateway/pipeline/loop_guard.py``)."""

    enabled: bool = True
    # A segment of at most ``max_period`` characters repeated back to back at least
    # ``min_repeats`` times, covering at least ``min_chars`` characters, is a loop.
    min_repeats: int = Field(8, ge=2)
    min_chars: int = Field(400, ge=16)
    max_period: int = Field(256, ge=1)
    # The model calling the same tool with the same arguments this many turns in a row.
    same_call_turns: int = Field(4, ge=2)


class RouteSettings(SamplingSettings):
    """A named set of sampling defaults; ``overrides`` win even over what the client sent."""

    chat_template_kwargs: TemplateSettings = Field(default_factory=TemplateSettings)
    overrides: SamplingSettings = Field(default_factory=lambda: SamplingSettings())
    # Reasoning-token budgets by effort name (chat ``reasoning_effort``, Anthropic
    # ``output_config.effort``, Responses ``reasoning.effort``); None: no budget.
    thinking_budgets: dict[str, int | None] = Field(
        default_factory=lambda: {
            "minimal": 256,
            "low": 1024,
            "medium": 4096,
            "high": None,
            "xhigh": None,
            "max": None,
        }
    )
    # Put back the reasoning of turns this gateway generated when a client omits it.
    preserve_thinking: bool = False
    loop_guard: LoopGuardSettings = Field(default_factory=LoopGuardSettings)
    # Check tool calls against their schemas and repair a bad one once, under a grammar.
    repair_tool_calls: bool = True

    _NOT_SAMPLING: ClassVar[set[str]] = {
        "chat_template_kwargs",
        "overrides",
        "thinking_budgets",
        "preserve_thinking",
        "loop_guard",
        "repair_tool_calls",
    }

    def defaults_layer(self) -> dict[str, Any]:
        return SamplingSettings.model_validate(self.model_dump(exclude=self._NOT_SAMPLING)).layer()


class AliasSettings(_Strict):
    name: str
    # Pins a sampling route for clients that cannot send sampling fields.
    route: str | None = None


class AdmissionSettings(_Strict):
    """The model's waiting line. Beyond it: 429; waiting longer than ``max_wait``: 503."""

    # Requests generating at once; None takes the backend's own limit (llama.cpp: 1).
    max_concurrent: int | None = Field(None, ge=1)
    max_queue: int = Field(64, ge=0, description="Requests that may wait beyond the running ones")
    max_wait: float = Field(300.0, gt=0, description="Seconds a request may wait in line")


class ModelSettings(_Strict):
    id: str = DEFAULT_MODEL_ID
    aliases: list[str | AliasSettings] = Field(default_factory=list)
    backend: BackendSettings
    # Merged over the built-in ``general`` and ``tools`` routes, field by field; other names
    # add routes reachable through an alias (or ``ID:ROUTE``).
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    admission: AdmissionSettings = Field(default_factory=lambda: AdmissionSettings())
    # The most tokens one request may ask for; more is a 400. Also the limit when the client
    # sends no max_tokens.
    max_tokens_limit: int | None = Field(None, ge=1)

    def alias_settings(self) -> list[AliasSettings]:
        return [a if isinstance(a, AliasSettings) else AliasSettings(name=a) for a in self.aliases]

    @model_validator(mode="after")
    def _alias_routes_exist(self) -> ModelSettings:
        known = {*BUILTIN_ROUTES, *self.routes}
        for i, alias in enumerate(self.alias_settings()):
            if alias.route is not None and alias.route not in known:
                raise ValueError(
                    f"aliases[{i}] pins route {alias.route!r}, which is not defined; "
                    f"routes: {', '.join(sorted(known))}"
                )
        return self

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
    )
    # Set on the subclass load_settings makes for a file (see settings_customise_sources).
    file_values: ClassVar[dict[str, Any]] = {}

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    models: list[ModelSettings] = Field(default_factory=list)

    # Auth: when any key is configured, every route but /health and /ready needs one, as
    # "Authorization: Bearer KEY" or "x-api-key: KEY". GLM_GATEWAY_API_KEYS takes a JSON list.
    api_keys: list[str] = Field(default_factory=list)
    api_keys_file: str | None = Field(None, description="One key per line; # starts a comment")

    # CORS is off unless origins are listed ("*" allows any).
    cors_origins: list[str] = Field(default_factory=list)

    # Limits on what a client may send.
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_messages: int = Field(4096, ge=1)
    max_tools: int = Field(512, ge=0)

    # Time limits, in seconds.
    request_timeout: float | None = Field(
        1800.0, gt=0, description="Longest a request may take in all, queueing included"
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="On shutdown, how long running requests may take to finish"
    )
    # SSE comments sent while a stream waits in line or for its first token; 0 turns them off.
    keepalive_interval: float = Field(15.0, ge=0)
    # How long an idle client connection stays open. Longer than the clients' own pool expiry
    # (httpx and the OpenAI/Anthropic SDKs: 5 s), so a client never reuses a connection the
    # server is closing at that moment (uvicorn's 5 s default races with them).
    http_keepalive_timeout: float = Field(75.0, gt=0)
    # uvicorn's event loop and HTTP parser. "auto" takes uvloop and httptools (dependencies
    # of the gateway, about 0.1-0.2 ms less per request than asyncio and h11, see
    # bench/overhead.py); the pure-Python pair stays selectable.
    server_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    server_http: Literal["auto", "h11", "httptools"] = "auto"

    # One JSON line per request; prompts and outputs only when asked for.
    log_format: Literal["json", "text"] = "json"
    log_prompts: bool = False

    # Preserved thinking: the reasoning of the gateway's own tool-call turns, per API key.
    thinking_memory_entries: int = Field(4096, ge=0)
    thinking_memory_chars: int = Field(32 * 1024 * 1024, ge=0)

    # The Anthropic Messages API: which served model Claude model ids run on.
    anthropic: AnthropicSettings = Field(default_factory=lambda: AnthropicSettings())
    # The Responses API: its response store and the key that seals reasoning.
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)

    def load_api_keys(self) -> list[str]:
        keys = [k for k in self.api_keys if k]
        if self.api_keys_file:
            path = Path(self.api_keys_file)
            if not path.is_file():
                raise FileNotFoundError(f"api_keys_file not found: {path}")
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.id, *(a.name for a in model.alias_settings())):
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
        # Lowest: the values ``load_settings`` read from the YAML file (parsed once, there).
        file_values = getattr(settings_cls, "file_values", {})
        file_source = InitSettingsSource(settings_cls, init_kwargs=dict(file_values))
        return (init_settings, env_settings, file_source)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from an optional YAML file, the environment and explicit overrides."""
    if config_file is None:
        return Settings(**overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings")
    with_file = type("FileSettings", (Settings,), {"file_values": data or {}})
    settings: Settings = with_file(**overrides)
    return Settings.model_validate(settings.model_dump())
