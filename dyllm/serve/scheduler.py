"""The batching queue between the HTTP handlers and the model worker.

Handlers `submit` jobs; the worker thread calls `next_batch`, which blocks until a job is queued
and then returns the oldest job together with every queued job that may share its batch (an
equal `batch_key`), oldest first, up to `max_batch_rows` canvas rows. Before closing a batch it
waits until the oldest job has been queued for the gathering window (`window_s`), so concurrent
requests that arrive a few milliseconds apart run as one `generate` call; a job that waited
behind a running batch already has, and goes at once. A job that runs alone (`batch_key` None)
never waits. Jobs that cannot share the oldest job's batch keep their place for the next one.

The queue is bounded (`max_queued` jobs, the running batch not counted): past it `submit` raises
`QueueFull` with a Retry-After estimate from recent batch times, and the app answers 429. After
`close` nothing new is accepted, and `next_batch` returns what is still queued, then None.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from dyllm.serve.jobs import Job


class QueueFull(Exception):
    """The queue holds `max_queued` jobs; `retry_after` is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class SchedulerClosed(Exception):
    """The server is shutting down and takes no new work."""


class BatchScheduler:
    """A FIFO of jobs, drained in batches of compatible jobs by one worker thread."""

    def __init__(
        self,
        max_batch_rows: int,
        window_s: float,
        max_queued: int,
        on_length: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_queued < 1 or window_s < 0:
            raise ValueError(
                "the batch size and queue length must be >= 1 and the window >= 0, got "
                f"{max_batch_rows}, {max_queued}, {window_s}"
            )
        self.max_batch_rows = max_batch_rows
        self.window_s = window_s
        self.max_queued = max_queued
        self._queue: list[Job] = []
        self._condition = threading.Condition()
        self._closed = False
        self._on_length = on_length
        self._batch_seconds = 1.0  # running mean of batch times, for Retry-After

    def __len__(self) -> int:
        with self._condition:
            return len(self._queue)

    def submit(self, job: Job) -> None:
        """Queue `job`; QueueFull past the bound, SchedulerClosed after `close`."""
        if job.row_count > self.max_batch_rows:
            raise ValueError(
                f"{job.row_count} rows do not fit a batch of {self.max_batch_rows} rows"
            )
        with self._condition:
            if self._closed:
                raise SchedulerClosed()
            if len(self._queue) >= self.max_queued:
                raise QueueFull(self._retry_after())
            job.enqueued_at = time.monotonic()
            self._queue.append(job)
            self._changed()

    def withdraw(self, job: Job) -> bool:
        """Take `job` off the queue if it is still there (its client left); True if it was."""
        with self._condition:
            if job not in self._queue:
                return False
            self._queue.remove(job)
            self._changed()
            return True

    def next_batch(self) -> list[Job] | None:
        """Block until a batch is ready; None once closed and drained."""
        with self._condition:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._condition.wait()
                head = self._queue[0]
                batch = self._gather(head)
                if batch is not None:
                    for job in batch:
                        self._queue.remove(job)
                    self._changed()
                    return batch

    def record_batch_time(self, seconds: float) -> None:
        """Feed the Retry-After estimate with a finished batch's wall time."""
        with self._condition:
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds

    def close(self) -> None:
        """Accept nothing more; the worker drains the queue and then stops."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _gather(self, head: Job) -> list[Job] | None:
        """`head`'s batch once its window has passed or it is full; None if `head` left."""
        while True:
            batch = self._mates(head)
            rows = sum(job.row_count for job in batch)
            remaining = head.enqueued_at + self.window_s - time.monotonic()
            if head.batch_key is None or rows >= self.max_batch_rows or self._closed:
                return batch
            if remaining <= 0:
                return batch
            self._condition.wait(remaining)
            if not self._queue or self._queue[0] is not head:
                return None

    def _mates(self, head: Job) -> list[Job]:
        if head.batch_key is None:
            return [head]
        batch, rows = [], 0
        for job in self._queue:
            if job.batch_key != head.batch_key or rows + job.row_count > self.max_batch_rows:
                continue
            batch.append(job)
            rows += job.row_count
        return batch

    def _changed(self) -> None:
        self._condition.notify_all()
        if self._on_length is not None:
            self._on_length(len(self._queue))

    def _retry_after(self) -> int:
        batches_ahead = len(self._queue) / self.max_batch_rows + 1
        return max(1, math.ceil(self._batch_seconds * batches_ahead))
