"""The FastAPI app: OpenAI's endpoints over one model worker, plus /health and /metrics.

| endpoint | answer |
|---|---|
| `GET /v1/models` (and `/v1/models/{id}`) | the one served model |
| `POST /v1/completions` | text completion of a prompt (text or token ids, one or several) |
| `POST /v1/chat/completions` | the messages rendered with the checkpoint's chat template |
| `GET /health` | `{"status": "ok", ...}`; 503 once the worker has stopped |
| `GET /metrics` | Prometheus' text format (`metrics.py`) |

A generation request is checked on the event loop (`preparation.py`, 4xx on any problem), queued
(`scheduler.py`, 429 with Retry-After when full) and answered from the worker's events
(`jobs.py`): as one JSON body, or with `stream: true` as server-sent events in OpenAI's chunk
format, one text chunk per finished block, the finish reasons and usage at the end, and with
`stream_canvas: true` a chunk per denoising step whose choices carry `canvas`. While it waits the
handler watches the request's deadline (`--request-timeout`: 504, or an error event in a stream)
and the client (a client that leaves abandons its job; batch-mates are unaffected).

Shutdown: uvicorn stops accepting connections and waits for the open ones, so running and queued
requests finish; then the lifespan closes the queue and joins the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from dyllm.serve.errors import APIError, install_error_handlers
from dyllm.serve.jobs import CanvasFrame, Event, Failed, Finished, Job, TextDelta
from dyllm.serve.metrics import CONTENT_TYPE, MetricsMiddleware, ServerMetrics
from dyllm.serve.preparation import PreparedRequest, prepare_chat, prepare_completion
from dyllm.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    choice_body,
    chunk_body,
    chunk_choice,
    completion_body,
    usage_body,
)
from dyllm.serve.scheduler import BatchScheduler, QueueFull, SchedulerClosed
from dyllm.serve.security import ApiKeyMiddleware, BodyLimitMiddleware
from dyllm.serve.settings import ServedModel, ServeSettings
from dyllm.serve.streaming import SSE_DONE, sse_event
from dyllm.serve.tensor_parallel import GroupLeader
from dyllm.serve.worker import ModelWorker

log = logging.getLogger("dyllm.serve")

DISCONNECT_POLL_S = 0.25
"""How often a waiting non-streamed request checks that its client is still there."""

BATCH_HEADER = "x-dyllm-batch-requests"
"""Response header: how many requests shared the answer's batch (1: it ran alone)."""


def create_app(
    served: ServedModel, settings: ServeSettings, leader: GroupLeader | None = None
) -> FastAPI:
    """The ASGI app serving `served` with `settings`' batching, limits and key (`leader`: rank
    0's link to the other processes of a split model)."""
    metrics = ServerMetrics()
    scheduler = BatchScheduler(
        settings.max_batch_size,
        settings.batch_window_ms / 1000,
        settings.max_queue,
        on_length=metrics.queue_length.set,
    )
    worker = ModelWorker(served, scheduler, metrics, leader)
    service = _Service(served, settings, scheduler, worker, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        log.info("serving %s (policy %s)", served.name, served.default_policy.label)
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(
        title="dyllm",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    created = int(time.time())

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = worker.alive
        body = {
            "status": "ok" if ok else "stopped",
            "model": served.name,
            "queued": len(scheduler),
            "running": len(worker.running_batch),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def model_card() -> dict[str, Any]:
        return {
            "id": served.name,
            "object": "model",
            "created": created,
            "owned_by": "dyllm",
            "family": served.family,
            "max_model_len": served.context_length,
            "policy": served.default_policy.label,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != served.name:
            raise APIError(
                404,
                f"the model {model_id!r} does not exist here; this server serves {served.name!r}",
                code="model_not_found",
                param="model",
            )
        return model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prepared = prepare_completion(body, served, settings.max_batch_size)
        return await service.respond(request, prepared, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        prepared = prepare_chat(body, served, settings.max_batch_size)
        return await service.respond(request, prepared, chat=True)

    return app


class _Service:
    """Queueing a prepared request and turning its job's events into the HTTP answer."""

    def __init__(
        self,
        served: ServedModel,
        settings: ServeSettings,
        scheduler: BatchScheduler,
        worker: ModelWorker,
        metrics: ServerMetrics,
    ) -> None:
        self.served = served
        self.settings = settings
        self.scheduler = scheduler
        self.worker = worker
        self.metrics = metrics

    async def respond(self, request: Request, prepared: PreparedRequest, chat: bool) -> Response:
        job = prepared.job
        job.attach(asyncio.get_running_loop())
        arrived = time.monotonic()
        deadline = arrived + self.settings.request_timeout_s
        try:
            self.scheduler.submit(job)
        except QueueFull as full:
            raise APIError(
                429,
                f"the server's queue is full ({self.settings.max_queue} requests wait for the "
                f"model); retry after {full.retry_after} s",
                code="queue_full",
                headers={"Retry-After": str(full.retry_after)},
            ) from None
        except SchedulerClosed:
            raise APIError(
                503, "the server is shutting down; retry on another instance", code="shutting_down"
            ) from None
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if job.stream_text:
            events = self._stream(request_id, prepared, chat, arrived, deadline)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        finished = await self._wait(request, job, deadline)
        if finished is None:  # the client left; nobody reads this
            return Response(status_code=499)
        body = self._whole_body(request_id, prepared, finished, chat)
        return JSONResponse(body, headers={BATCH_HEADER: str(finished.batch_requests)})

    async def _wait(self, request: Request, job: Job, deadline: float) -> Finished | None:
        """The job's `Finished`; None if the client left; APIError on failure or timeout."""
        assert job.events is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._abandon(job, "timeout")
                raise self._timeout_error()
            try:
                event = await asyncio.wait_for(
                    job.events.get(), timeout=min(remaining, DISCONNECT_POLL_S)
                )
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self._abandon(job, "disconnect")
                    return None
                continue
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise event.error

    async def _stream(
        self,
        request_id: str,
        prepared: PreparedRequest,
        chat: bool,
        arrived: float,
        deadline: float,
    ) -> AsyncIterator[bytes]:
        """Server-sent events: role/echo, text per finished block, canvases, finish, usage."""
        job = prepared.job
        assert job.events is not None
        created = int(time.time())
        model = self.served.name
        choices = range(len(job.choice_rows))
        completed = False

        def chunk(items: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            return sse_event(chunk_body(request_id, model, created, items, chat, usage))

        try:
            if chat:
                yield chunk([chunk_choice(i, "", chat, role=True) for i in choices])
            if prepared.echo_texts is not None:
                yield chunk([chunk_choice(i, prepared.echo_texts[i], chat) for i in choices])
            first_text = True
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandon(job, "timeout")
                    yield sse_event(self._timeout_error().body())
                    completed = True
                    return
                try:
                    event: Event = await asyncio.wait_for(job.events.get(), timeout=remaining)
                except asyncio.TimeoutError:
                    continue
                if isinstance(event, TextDelta):
                    if first_text:
                        self.metrics.first_text.observe(time.monotonic() - arrived)
                        first_text = False
                    mine = [i for i in choices if job.choice_rows[i] == event.row]
                    yield chunk([chunk_choice(i, event.text, chat) for i in mine])
                elif isinstance(event, CanvasFrame):
                    mine = [i for i in choices if job.choice_rows[i] == event.row]
                    extra = {"canvas": event.canvas}
                    yield chunk([chunk_choice(i, None, chat, extra=extra) for i in mine])
                elif isinstance(event, Failed):
                    yield sse_event(event.error.body())
                    completed = True
                    return
                elif isinstance(event, Finished):
                    for part in self._closing_chunks(prepared, event, chat):
                        yield chunk(*part)
                    yield SSE_DONE
                    completed = True
                    return
        finally:
            if not completed:
                self._abandon(job, "disconnect")

    def _closing_chunks(
        self, prepared: PreparedRequest, finished: Finished, chat: bool
    ) -> list[tuple[list[dict[str, Any]], dict[str, int] | None]]:
        """The finish-reason chunk (with the usage, unless OpenAI's separate usage chunk was
        asked for) and that separate chunk."""
        job = prepared.job
        items = []
        for index, row in enumerate(job.choice_rows):
            outcome = finished.rows[row]
            extra = self._token_ids(prepared, outcome.token_ids)
            items.append(chunk_choice(index, None, chat, outcome.finish_reason, extra=extra))
        usage = self._usage(prepared, finished)
        if prepared.include_usage:
            return [(items, None), ([], usage)]
        return [(items, usage)]

    def _whole_body(
        self, request_id: str, prepared: PreparedRequest, finished: Finished, chat: bool
    ) -> dict[str, Any]:
        choices = []
        for index, row in enumerate(prepared.job.choice_rows):
            outcome = finished.rows[row]
            text = outcome.text
            if prepared.echo_texts is not None:
                text = prepared.echo_texts[index] + text
            extra = self._token_ids(prepared, outcome.token_ids)
            choices.append(choice_body(index, text, outcome.finish_reason, chat, extra))
        usage = self._usage(prepared, finished)
        return completion_body(request_id, self.served.name, choices, usage, chat)

    def _token_ids(self, prepared: PreparedRequest, token_ids: list[int]) -> dict[str, Any]:
        if prepared.return_token_ids or self.served.model.tokenizer is None:
            return {"token_ids": token_ids}
        return {}

    @staticmethod
    def _usage(prepared: PreparedRequest, finished: Finished) -> dict[str, int]:
        rows = prepared.job.choice_rows
        completion = sum(len(finished.rows[row].token_ids) for row in rows)
        return usage_body(prepared.prompt_tokens, completion)

    def _abandon(self, job: Job, reason: str) -> None:
        if job.abandoned:
            return
        job.abandon(reason)
        self.scheduler.withdraw(job)
        self.metrics.abandoned.labels(reason).inc()

    def _timeout_error(self) -> APIError:
        return APIError(
            504,
            f"the request did not finish within the server's --request-timeout of "
            f"{self.settings.request_timeout_s:g} s; ask for fewer tokens or steps, or retry "
            "when the server is less busy",
            code="timeout",
        )
