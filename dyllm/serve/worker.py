"""The model worker: one thread that owns the model and runs every batch, one at a time.

The model is never shared between threads or processes (one accelerator, one set of weights), and
the HTTP event loop never waits on it: the loop queues jobs (`scheduler.py`) and awaits their
events (`jobs.py`), while this thread takes batches, runs `dyllm.generate` once per batch and
posts each job's events back. A fresh policy is built per batch (policies keep per-call state).

During the run, `BatchObserver` (the `on_step` callback) streams: after each step it checks, for
the rows of streaming jobs, whether the current block still holds a mask; a block without one is
final, and its text goes out (`streaming.AnswerText`). Canvas-streaming jobs get their rows'
canvas at every step. The observer also stops the batch (`BatchAbandoned`) once every job in it
has been abandoned (clients gone or timed out); a batch with one live job runs to the end, so
batch-mates of a client that left still get their answers.

A failure inside a batch fails that batch's jobs (400 for a ValueError the checks could not
foresee, such as a calibrating policy refusing the prompts; 500 otherwise, logged with its
traceback) and the worker goes on with the next batch.

Under tensor parallelism (`tensor_parallel.py`) the worker also leads the other processes: it
announces each batch before running it, agrees with them on each step's stop or go, and sends
the end when it stops. After an unexpected error there (one the other processes may not share)
it fails the batch, refuses later ones with 503 and shuts the server down.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence

import dyllm
from dyllm.generation import GenerationResult, StepReport
from dyllm.serve.errors import APIError
from dyllm.serve.jobs import CanvasFrame, Failed, Finished, Job, RowOutcome, TextDelta
from dyllm.serve.metrics import ServerMetrics
from dyllm.serve.scheduler import BatchScheduler
from dyllm.serve.settings import ServedModel
from dyllm.serve.streaming import (
    AnswerText,
    answer_before_eos,
    render_canvas,
    shown_text,
    tokens_for_text,
)
from dyllm.serve.tensor_parallel import (
    AgreedSteps,
    BatchOrder,
    GroupLeader,
    agreed_policy,
    build_policy,
)

log = logging.getLogger("dyllm.serve")


class BatchAbandoned(Exception):
    """Raised from `on_step` to stop a batch nobody waits for any more."""


class ModelWorker:
    """Runs the scheduler's batches on `served.model` in a thread of its own."""

    def __init__(
        self,
        served: ServedModel,
        scheduler: BatchScheduler,
        metrics: ServerMetrics,
        leader: GroupLeader | None = None,
    ) -> None:
        self.served = served
        self.scheduler = scheduler
        self.metrics = metrics
        self.leader = leader
        """Rank 0's link to the other processes of a split model (None: one process)."""
        self.running_batch: list[Job] = []
        self._thread = threading.Thread(target=self._run, name="dyllm-model-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Close the queue, let the worker finish what is queued and running; True if it did."""
        self.scheduler.close()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch = self.scheduler.next_batch()
            if batch is None:
                if self.leader is not None:
                    self.leader.close()  # the other processes' loops end
                return
            self.running_batch = batch
            try:
                if self.leader is not None and self.leader.broken:
                    _fail(batch, APIError(503, "the server is shutting down after an error"))
                else:
                    self._run_batch(batch)
            except Exception:  # the worker must outlive any one batch
                log.exception("a batch of %d request(s) failed", len(batch))
                _fail(batch, APIError(500, "the server failed on this request; see its log"))
            finally:
                self.running_batch = []

    def _run_batch(self, batch: list[Job]) -> None:
        taken = time.monotonic()
        for job in batch:
            job.started_at = taken
            self.metrics.queue_wait.observe(taken - job.enqueued_at)
        jobs = [job for job in batch if not job.abandoned]
        if not jobs:
            return
        model = self.served.model
        config, spec = jobs[0].config, jobs[0].policy
        rows = [row for job in jobs for row in job.rows]
        observer = BatchObserver(self.served, jobs)
        on_step: BatchObserver | AgreedSteps = observer
        if self.leader is not None:
            self.leader.announce(BatchOrder(rows, config, spec))
            on_step = AgreedSteps(self.leader, observer)
        try:
            if self.leader is not None:
                policy = agreed_policy(self.served, spec, rows, config)
            else:
                policy = build_policy(self.served, spec, rows, config)
            began = time.perf_counter()
            result = dyllm.generate(model, rows, config, policy=policy, on_step=on_step)
            seconds = time.perf_counter() - began
        except BatchAbandoned:
            self.metrics.aborted_batches.inc()
            return
        except ValueError as error:
            _fail(jobs, APIError(400, str(error), code="invalid_value"))
            return
        except Exception:
            if isinstance(on_step, AgreedSteps) and not on_step.stopped:
                self._break_group()
            raise
        self.scheduler.record_batch_time(seconds)
        self._count(spec.name, jobs, rows, result, seconds)
        observer.finish(result)

    def _break_group(self) -> None:
        """An error the other processes may not share: they may wait in a collective this
        process will not enter, so no more batches run, and the server shuts down (torchrun then
        ends the other processes)."""
        assert self.leader is not None
        self.leader.broken = True
        log.critical(
            "an error on process 0 of a split model: the processes may no longer agree; "
            "stopping the server"
        )
        os.kill(os.getpid(), signal.SIGTERM)

    def _count(
        self,
        policy: str,
        jobs: list[Job],
        rows: list[list[int]],
        result: GenerationResult,
        seconds: float,
    ) -> None:
        stats = result.stats
        metrics = self.metrics
        metrics.batches.labels(policy).inc()
        metrics.batch_size.observe(len(jobs))
        metrics.batch_rows.observe(len(rows))
        metrics.batch_seconds.labels(policy).observe(seconds)
        metrics.generated_tokens.labels(policy).inc(stats.generated_tokens)
        metrics.prompt_tokens.inc(sum(len(row) for row in rows))
        metrics.nfe.labels(policy).inc(stats.nfe)
        metrics.steps.labels(policy).inc(stats.steps_run)
        fraction = float(stats.extra.get("computed_token_ratio", 1.0))
        metrics.computed_fraction.labels(policy).observe(fraction)


class BatchObserver:
    """The batch's `on_step`: streams finished blocks and canvases, stops abandoned batches.

    Row indices: `offsets[j] + r` is row r of job j on the batch's canvas [B, L].
    """

    def __init__(self, served: ServedModel, jobs: Sequence[Job]) -> None:
        self.jobs = list(jobs)
        self.offsets: list[int] = []
        total = 0
        for job in self.jobs:
            self.offsets.append(total)
            total += job.row_count
        model = served.model
        self.mask_token_id = model.config.mask_token_id
        self.eos_token_id = model.config.eos_token_id
        tokenizer = model.tokenizer
        self.decode = (
            None
            if tokenizer is None
            else (lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True))
        )
        self.texts = {
            id(job): [AnswerText(self.decode, job.stops) for _ in job.rows]
            for job in self.jobs
            if job.stream_text and self.decode is not None
        }
        self.known_end = [0] * total
        """Per row, one past the last canvas column whose text has been streamed."""

    def __call__(self, report: StepReport) -> None:
        if all(job.abandoned for job in self.jobs):
            raise BatchAbandoned()
        streaming = [j for j in self.jobs if id(j) in self.texts and not j.abandoned]
        if streaming:
            self._stream_blocks(report, streaming)
        for job in self.jobs:
            if job.stream_canvas and not job.abandoned:
                self._stream_canvas(report, job)

    def _rows(self, job: Job) -> range:
        offset = self.offsets[self.jobs.index(job)]
        return range(offset, offset + job.row_count)

    def _stream_blocks(self, report: StepReport, jobs: list[Job]) -> None:
        context = report.context
        start, end = context.block_start, context.block_end
        rows = [row for job in jobs for row in self._rows(job) if self.known_end[row] < end]
        if not rows:
            return
        block = report.canvas[rows, start:end]  # [rows, W]
        finished = (block != self.mask_token_id).all(dim=1).tolist()  # one read-back
        for row, done in zip(rows, finished, strict=True):
            if not done:
                continue
            self.known_end[row] = end
            job, local = self._owner(row)
            generated = report.canvas[row, context.prompt_length : end].tolist()
            answer, ended = answer_before_eos(generated, self.eos_token_id)
            delta = self.texts[id(job)][local].update(answer, complete=ended)
            if delta:
                job.post(TextDelta(local, delta))

    def _stream_canvas(self, report: StepReport, job: Job) -> None:
        context = report.context
        rows = list(self._rows(job))
        tokens = report.canvas[rows, context.prompt_length :].tolist()  # [rows, G]
        committed = report.committed[rows, context.prompt_length :]  # bool [rows, G]
        for local, (row_tokens, row_committed) in enumerate(zip(tokens, committed, strict=True)):
            positions = row_committed.nonzero().flatten().tolist()
            frame = {
                "step": context.step,
                "block": context.block,
                "token_ids": row_tokens,
                "mask_token_id": self.mask_token_id,
                "masked": sum(token == self.mask_token_id for token in row_tokens),
                "committed": positions,
                "text": render_canvas(row_tokens, self.mask_token_id, self.decode),
            }
            job.post(CanvasFrame(local, frame))

    def _owner(self, row: int) -> tuple[Job, int]:
        for job, offset in zip(self.jobs, self.offsets, strict=True):
            if offset <= row < offset + job.row_count:
                return job, row - offset
        raise IndexError(row)

    def finish(self, result: GenerationResult) -> None:
        """Post each job's remaining text and its answers."""
        for job, offset in zip(self.jobs, self.offsets, strict=True):
            outcomes = []
            for local in range(job.row_count):
                generated = result.token_ids[offset + local]
                outcome = self._outcome(job, generated)
                outcomes.append(outcome)
                if id(job) in self.texts:
                    answer, _ = answer_before_eos(generated, self.eos_token_id)
                    delta = self.texts[id(job)][local].update(answer, complete=True)
                    if delta:
                        job.post(TextDelta(local, delta))
            job.post(Finished(outcomes, batch_requests=len(self.jobs)))

    def _outcome(self, job: Job, generated: list[int]) -> RowOutcome:
        answer, ended = answer_before_eos(generated, self.eos_token_id)
        if self.decode is None:
            return RowOutcome("", answer, "stop" if ended else "length")
        text, stopped = shown_text(self.decode(answer), job.stops, complete=True)
        if stopped:
            answer = answer[: tokens_for_text(answer, len(text), self.decode)]
        return RowOutcome(text, answer, "stop" if ended or stopped else "length")


def _fail(jobs: Sequence[Job], error: APIError) -> None:
    for job in jobs:
        job.post(Failed(error))
