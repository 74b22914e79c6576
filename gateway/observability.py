"""Prometheus metrics and the per-request record that the access log writes as one JSON line.

Each app has its own ``CollectorRegistry`` (no module-level metrics), so tests and several apps
in one process never share counters. Queue depth and backend health are read at scrape time
from the live objects instead of being kept in step by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .models import ModelRegistry

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2)


@dataclass(slots=True)
class RequestRecord:
    """What one request did; filled in along the way, logged once at the end."""

    request_id: str
    method: str = ""
    path: str = ""
    # The wire API that served it ("openai_chat", "anthropic", ...), None for other paths.
    api: str | None = None
    status: int = 0
    model: str | None = None
    route: str | None = None
    stream: bool | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    tool_calls: int | None = None
    queue_wait_ms: float | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    overhead_ms: float | None = None
    cancelled: bool = False
    error: str | None = None
    budget_reached: bool | None = None
    loop_stop: str | None = None
    # (what failed, how it ended) per tool call the gateway checked and found wanting.
    repairs: list[tuple[str, str]] = field(default_factory=list)
    prompt: str | None = None
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_log(self) -> dict[str, Any]:
        # A shallow read, not dataclasses.asdict's recursive copy (a measurable part of a
        # request on an instant upstream); the one list field is logged as it is.
        data = {f: getattr(self, f) for f in _RECORD_FIELDS}
        if not data["repairs"]:
            data.pop("repairs")
        return {
            "event": "request",
            **{k: v for k, v in data.items() if v is not None},
            **self.extra,
        }


_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord) if f.name != "extra")


class _LiveState(Collector):
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "glm_gateway_queue_depth", "Requests waiting for the model", labels=["model"]
        )
        running = GaugeMetricFamily(
            "glm_gateway_requests_running", "Requests being generated", labels=["model"]
        )
        healthy = GaugeMetricFamily(
            "glm_gateway_backend_healthy", "1 when the model's backend can serve", labels=["model"]
        )
        engine: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for model in self._models:
            depth.add_metric([model.id], model.gate.waiting)
            running.add_metric([model.id], model.gate.running)
            healthy.add_metric([model.id], 1.0 if model.backend.ready else 0.0)
            for metric in model.backend.engine_metrics():
                family = engine.get(metric.name)
                if family is None:
                    kind = CounterMetricFamily if metric.counter else GaugeMetricFamily
                    family = kind(
                        f"glm_gateway_engine_{metric.name}", metric.help, labels=["model"]
                    )
                    engine[metric.name] = family
                family.add_metric([model.id], metric.value)
        yield depth
        yield running
        yield healthy
        yield from engine.values()


class Metrics:
    def __init__(self, models: ModelRegistry) -> None:
        # Labelled children by (metric, label values): a handful of models, routes, statuses.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "glm_gateway_requests",
            "HTTP requests",
            ["model", "route", "status", "api"],
            registry=r,
        )
        self.ttft = Histogram(
            "glm_gateway_time_to_first_token_seconds",
            "From arrival to the first generated text",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "glm_gateway_inter_token_latency_seconds",
            "Gap between consecutive generated tokens (a chunk's gap shared by its tokens)",
            ["model"],
            buckets=_TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "glm_gateway_request_duration_seconds",
            "End-to-end duration of generations",
            ["model", "route", "api"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "glm_gateway_queue_wait_seconds",
            "Time spent waiting for the model",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "glm_gateway_prompt_tokens", "Prompt tokens", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "glm_gateway_completion_tokens", "Completion tokens", ["model"], registry=r
        )
        self.reasoning_tokens = Counter(
            "glm_gateway_reasoning_tokens",
            "Completion tokens spent reasoning",
            ["model"],
            registry=r,
        )
        self.tool_calls = Counter(
            "glm_gateway_tool_calls", "Tool calls parsed from model output", ["model"], registry=r
        )
        self.cancellations = Counter(
            "glm_gateway_cancellations",
            "Requests whose client went away before the end",
            ["model"],
            registry=r,
        )
        self.rejections = Counter(
            "glm_gateway_rejections",
            "Requests refused before generation (queue full, queue timeout, limits, auth)",
            ["model", "reason"],
            registry=r,
        )
        self.thinking_restored = Counter(
            "glm_gateway_thinking_restored",
            "Assistant turns whose dropped reasoning the gateway put back",
            ["model"],
            registry=r,
        )
        self.thinking_budget_reached = Counter(
            "glm_gateway_thinking_budget_reached",
            "Generations whose reasoning the gateway closed at the thinking budget",
            ["model"],
            registry=r,
        )
        self.loop_stops = Counter(
            "glm_gateway_loop_guard_stops",
            "Generations the loop guard stopped",
            ["model", "reason"],
            registry=r,
        )
        self.tool_call_repairs = Counter(
            "glm_gateway_tool_call_repairs",
            "Tool calls that failed their schema, by what failed and how it ended",
            ["model", "problem", "outcome"],
            registry=r,
        )
        r.register(_LiveState(models))

    def _child(self, metric: Any, *labels: str) -> Any:
        # prometheus_client's labels() costs microseconds a call, several per request.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._children) < 4096:  # label values are bounded; the cache is too
                self._children[key] = child
        return child

    def observe_request(self, record: RequestRecord) -> None:
        model = record.model or "-"
        api = record.api or "-"
        self._child(self.requests, model, record.route or "-", str(record.status), api).inc()
        # Generations (any wire API): the run filled in the model and the API.
        if record.model is None or record.api is None:
            return
        if record.duration_ms is not None and record.finish_reason is not None:
            self._child(self.duration, model, record.route or "-", api).observe(
                record.duration_ms / 1000
            )
        if record.ttft_ms is not None:
            self._child(self.ttft, model).observe(record.ttft_ms / 1000)
        if record.queue_wait_ms is not None:
            self._child(self.queue_wait, model).observe(record.queue_wait_ms / 1000)
        for counter, value in (
            (self.prompt_tokens, record.prompt_tokens),
            (self.completion_tokens, record.completion_tokens),
            (self.reasoning_tokens, record.reasoning_tokens),
            (self.tool_calls, record.tool_calls),
        ):
            if value:
                self._child(counter, model).inc(value)
        if record.cancelled:
            self._child(self.cancellations, model).inc()
        if record.budget_reached:
            self._child(self.thinking_budget_reached, model).inc()
        if record.loop_stop is not None:
            self._child(self.loop_stops, model, record.loop_stop).inc()
        for problem, outcome in record.repairs:
            self._child(self.tool_call_repairs, model, problem, outcome).inc()
        if record.status in (413, 429) or record.error in ("queue_full", "queue_timeout"):
            self._child(self.rejections, model, record.error or str(record.status)).inc()
