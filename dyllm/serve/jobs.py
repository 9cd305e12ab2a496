"""A queued request as the worker sees it (`Job`), and the events it sends back to the handler.

The HTTP handler runs on the event loop; the model runs on the worker thread. They share a `Job`:
the handler fills it and waits on `Job.events` (an asyncio queue); the worker posts events with
`Job.post`, which hands them to the loop through `call_soon_threadsafe` (never touching the queue
from its own thread). `Job.abandon` (client gone, timeout) is a flag the worker reads between
steps: a batch whose every job is abandoned stops early, and the others' answers are unaffected.

Rows: a job's `rows` are the prompts the worker puts on the canvas, `choice_rows[i]` the row that
answers choice i. Deterministic requests run each prompt once and share its row between the `n`
choices (they would be identical); sampled ones run a row per choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from dyllm.generation import GenerationConfig
from dyllm.serve.errors import APIError
from dyllm.serve.policy_spec import PolicySpec


@dataclass(frozen=True)
class TextDelta:
    """New final text of a row (its blocks decoded so far, cut at a stop string)."""

    row: int
    text: str


@dataclass(frozen=True)
class CanvasFrame:
    """A row's canvas after one denoising step (the `stream_canvas` extension)."""

    row: int
    canvas: dict[str, Any]


@dataclass(frozen=True)
class RowOutcome:
    """A row's final answer."""

    text: str
    token_ids: list[int]
    """The answer's tokens up to its end (EOS or stop string), EOS excluded."""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (the whole gen length was used)."""


@dataclass(frozen=True)
class Finished:
    rows: list[RowOutcome]
    batch_requests: int
    """Requests that shared the batch (1: ran alone)."""


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = TextDelta | CanvasFrame | Finished | Failed


@dataclass(eq=False)
class Job:
    """One request's work: what to generate, how, and where its events go."""

    rows: list[list[int]]
    """Token ids of each canvas row's prompt."""
    choice_rows: list[int]
    """Choice index -> row index."""
    config: GenerationConfig
    """Resolved options, the same for every row (the worker runs one generate per batch)."""
    policy: PolicySpec
    batch_key: Hashable | None
    """Jobs with equal keys may share a batch; None: this job runs alone."""
    stops: tuple[str, ...] = ()
    stream_text: bool = False
    stream_canvas: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue[Event] | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    """When the worker took it (monotonic seconds); None while queued."""
    _abandoned: threading.Event = field(default_factory=threading.Event)
    abandon_reason: str | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the job to the handler's loop (call on that loop, before queueing)."""
        self.loop = loop
        self.events = asyncio.Queue()

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()

    def abandon(self, reason: str) -> None:
        """Nobody waits for this job any more (`reason`: disconnect, timeout)."""
        if not self._abandoned.is_set():
            self.abandon_reason = reason
            self._abandoned.set()

    def post(self, event: Event) -> None:
        """Deliver `event` to the handler; from any thread. Dropped once the loop is closed."""
        if self.loop is None or self.events is None or self.abandoned:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
