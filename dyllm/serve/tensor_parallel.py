"""`dyllm serve` over a model split among processes (`torchrun ... serve --tensor-parallel N`).

Every process loads its shard; the first (rank 0) runs the HTTP server and the model worker as
a single process does, and the others follow it:

- Before each batch's `dyllm.generate`, rank 0's worker broadcasts a `BatchOrder` (the rows, the
  batch's `GenerationConfig` and its `PolicySpec`); each follower builds the same policy and runs
  the same `dyllm.generate`, discarding the answers. Building the policy is agreed on
  (`launch.agree`): a policy that refuses the prompts on one process refuses on all.
- At every step all processes agree on stop or go: rank 0's `on_step` (`AgreedSteps`) runs the
  streaming observer, then broadcasts whether the batch goes on; on a stop (every client left,
  or the observer failed) followers raise `BatchStopped` from their own `on_step`, so no process
  is left inside a collective the others never enter.
- Errors `generate` raises before its first step (ValueError for options the checks could not
  foresee) are the same on every process: each fails the batch and goes on. Any other error on a
  follower ends it (status 2) and torchrun's agent ends the group; on rank 0 the batch fails and
  the server shuts down, since the processes may no longer be at the same point.
- On shutdown rank 0 broadcasts None; each follower's loop ends and the process exits 0.
  Followers ignore SIGINT and SIGTERM (torchrun passes its signal to every process), waiting for
  rank 0's graceful shutdown to send the sentinel.

An idle server makes no collective call for as long as no request comes, so the group is joined
with a long timeout (`IDLE_TIMEOUT`) instead of torch's 30 minutes.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist

import dyllm
from dyllm.distributed import launch
from dyllm.generation import GenerationConfig, StepReport
from dyllm.policies import SaliencyPolicy
from dyllm.serve.policy_spec import PolicySpec
from dyllm.serve.settings import ServedModel

log = logging.getLogger("dyllm.serve")

IDLE_TIMEOUT = timedelta(days=365)
"""How long a collective may wait: a follower waits in one for the next request."""


class BatchStopped(Exception):
    """Raised from a follower's `on_step` when rank 0 stopped the batch."""


@dataclass(frozen=True)
class BatchOrder:
    """What every process needs to run rank 0's next batch identically."""

    rows: list[list[int]]
    config: GenerationConfig
    policy: PolicySpec


def build_policy(
    served: ServedModel, spec: PolicySpec, rows: list[list[int]], config: GenerationConfig
) -> SaliencyPolicy:
    """The batch's fresh policy, as the single-process worker builds it."""
    options = {name: value for name, value in config.to_dict().items() if name != "progress"}
    return spec.build(served.family, served.model, prompts=rows, generation_options=options)


def agreed_policy(
    served: ServedModel, spec: PolicySpec, rows: list[list[int]], config: GenerationConfig
) -> SaliencyPolicy:
    """`build_policy` on every process; a refusal on any is a ValueError on all."""
    return launch.agree(lambda: build_policy(served, spec, rows, config))


def _broadcast(value: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GroupLeader:
    """Rank 0's side: announces batches, each step's decision, and the end.

    Every call is a collective; the model worker's thread makes all of them, in the order the
    followers expect. `close` is idempotent (the worker sends the sentinel when it stops; the
    server sends it too when the worker never started, e.g. the port was taken).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.closed = False
        self.broken = False
        """Set after an error that may have left the processes at different points: no more
        collectives are made (the group is ended by the process exiting)."""

    def announce(self, order: BatchOrder) -> None:
        _broadcast(order)

    def decide(self, go_on: bool) -> None:
        """One step's decision (every process calls this once per step)."""
        _broadcast(go_on)

    def close(self) -> None:
        with self._lock:
            if self.closed or self.broken:
                return
            self.closed = True
        _broadcast(None)


class AgreedSteps:
    """Rank 0's `on_step`: runs the batch's observer, then tells the followers whether the batch
    goes on; re-raises the observer's exception (BatchAbandoned or a failure) after a stop."""

    def __init__(self, leader: GroupLeader, observer: Any) -> None:
        self.leader = leader
        self.observer = observer
        self.stopped = False
        """True once a stop was sent: the followers left the batch at the same step."""

    def __call__(self, report: StepReport) -> None:
        try:
            self.observer(report)
        except BaseException:
            self.stopped = True
            self.leader.decide(False)
            raise
        self.leader.decide(True)


def _follower_step(_report: StepReport) -> None:
    if not _broadcast(None):
        raise BatchStopped()


def follow(served: ServedModel) -> int:
    """A follower's loop: run rank 0's batches until its sentinel; the exit status (0)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)  # rank 0 ends the loop with its sentinel
    model = served.model
    while True:
        order = _broadcast(None)
        if order is None:
            log.info(
                "process %d of %d: process 0 stopped serving; leaving",
                launch.rank(),
                launch.world_size(),
            )
            return 0
        if not isinstance(order, BatchOrder):
            raise TypeError(f"process 0 sent {type(order).__name__}, not a batch")
        try:
            policy = agreed_policy(served, order.policy, order.rows, order.config)
            dyllm.generate(model, order.rows, order.config, policy=policy, on_step=_follower_step)
        except (BatchStopped, ValueError):
            # a stop, or an error every process raised alike: rank 0 answers the clients
            continue
