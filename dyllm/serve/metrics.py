"""Prometheus metrics of the server, kept in its own registry and written by prometheus_client.

`GET /metrics` returns `ServerMetrics.render()`, Prometheus' text format. What is counted
(labels in brackets):

- `dyllm_requests_total` [endpoint, status]: HTTP requests answered;
- `dyllm_request_latency_seconds` [endpoint]: arrival to the last byte of the answer;
- `dyllm_time_to_first_text_seconds`: arrival to the first streamed text;
- `dyllm_queue_length`: requests waiting for the worker (a gauge);
- `dyllm_queue_wait_seconds`: arrival to the worker taking the request;
- `dyllm_batches_total` [policy]: generate calls the worker ran;
- `dyllm_batch_size`, `dyllm_batch_rows`: requests and canvas rows per batch (a batch of more
  than one request is batching at work);
- `dyllm_batch_seconds` [policy]: wall time of a batch's generate call;
- `dyllm_generated_tokens_total` [policy], `dyllm_prompt_tokens_total`: answer tokens before
  EOS, prompt tokens of the rows run;
- `dyllm_nfe_total` [policy], `dyllm_denoising_steps_total` [policy]: forward passes, steps;
- `dyllm_computed_fraction` [policy]: per batch, the fraction of token rows the policy
  recomputed (the engine's computed-token ratio; 1 for dense);
- `dyllm_abandoned_requests_total` [reason]: requests whose client left or that timed out;
- `dyllm_aborted_batches_total`: batches stopped early because every request in them was
  abandoned.

`MetricsMiddleware` (pure ASGI) counts every response, streamed ones when their last byte is
sent; one whose client left before that counts with status 499. Endpoint labels are the served
routes; anything else is `other`, so random paths cannot grow the label set.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ENDPOINTS = frozenset(
    {"/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics"}
)
CONTENT_TYPE = CONTENT_TYPE_LATEST
CLIENT_CLOSED = "499"
"""The status label of a response its client left before the end (nginx's convention)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
FRACTION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class ServerMetrics:
    """Every metric of one server, in a registry of its own (several apps can coexist)."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.requests = Counter(
            "dyllm_requests", "HTTP requests answered", ["endpoint", "status"], registry=registry
        )
        self.latency = Histogram(
            "dyllm_request_latency_seconds",
            "arrival to the last byte of the answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_text = Histogram(
            "dyllm_time_to_first_text_seconds",
            "arrival to the first streamed text",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_length = Gauge(
            "dyllm_queue_length", "requests waiting for the worker", registry=registry
        )
        self.queue_wait = Histogram(
            "dyllm_queue_wait_seconds",
            "arrival to the worker taking the request",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batches = Counter(
            "dyllm_batches", "generate calls the worker ran", ["policy"], registry=registry
        )
        self.batch_size = Histogram(
            "dyllm_batch_size", "requests per batch", buckets=SIZE_BUCKETS, registry=registry
        )
        self.batch_rows = Histogram(
            "dyllm_batch_rows", "canvas rows per batch", buckets=SIZE_BUCKETS, registry=registry
        )
        self.batch_seconds = Histogram(
            "dyllm_batch_seconds",
            "wall time of a batch's generate call",
            ["policy"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.generated_tokens = Counter(
            "dyllm_generated_tokens", "answer tokens before EOS", ["policy"], registry=registry
        )
        self.prompt_tokens = Counter(
            "dyllm_prompt_tokens", "prompt tokens of the rows run", registry=registry
        )
        self.nfe = Counter(
            "dyllm_nfe", "forward passes of the network", ["policy"], registry=registry
        )
        self.steps = Counter(
            "dyllm_denoising_steps", "denoising steps", ["policy"], registry=registry
        )
        self.computed_fraction = Histogram(
            "dyllm_computed_fraction",
            "per batch, the fraction of token rows the policy recomputed (1 for dense)",
            ["policy"],
            buckets=FRACTION_BUCKETS,
            registry=registry,
        )
        self.abandoned = Counter(
            "dyllm_abandoned_requests",
            "requests whose client left or that timed out",
            ["reason"],
            registry=registry,
        )
        self.aborted_batches = Counter(
            "dyllm_aborted_batches",
            "batches stopped early because every request in them was abandoned",
            registry=registry,
        )

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP response (pure ASGI: streaming passes through untouched)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        began = time.perf_counter()
        status = 500
        counted = False

        def count(label: str) -> None:
            nonlocal counted
            counted = True
            self.metrics.requests.labels(endpoint, label).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - began)

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                count(str(status))

        try:
            await self.app(scope, receive, counted_send)
        finally:
            if not counted:
                count(CLIENT_CLOSED)
