"""What `dyllm serve` is started with, and the model it serves.

`ServeSettings` holds the command line's flags (the same fields in Python, for tests and the
load benchmark). `ServedModel` is the loaded checkpoint with the name clients call it by and
the server's default policy; `load_served_model` builds it, so a bad folder, dtype or policy
fails at start with one line rather than at the first request.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from dyllm.models import DiffusionTransformer
from dyllm.serve.policy_spec import PolicySpec, parse_policy_spec
from dyllm.serve.security import DEFAULT_BODY_LIMIT

API_KEY_VARIABLE = "DYLLM_API_KEY"
"""The API key may come from this environment variable instead of `--api-key` (which other
users of the machine can read in the process list)."""


@dataclass(frozen=True)
class ServeSettings:
    """The server's knobs; each is a `dyllm serve` flag of the same name."""

    model: str = "llada-ref"
    """Checkpoint folder or built-in name."""
    served_model_name: str | None = None
    """The `model` clients send; default: the built-in name or the folder's name."""
    device: str = "cpu"
    dtype: str | None = None
    policy: str = "dense"
    """Default policy, `NAME[:KEY=VALUE,...]`; a request's `policy` field overrides it."""
    policy_args: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16
    """Canvas rows per generate call at most."""
    batch_window_ms: float = 10.0
    """How long the oldest queued request waits for batch-mates."""
    max_queue: int = 256
    """Requests waiting for the worker at most; past it, 429."""
    request_timeout_s: float = 600.0
    """Seconds from arrival to the last byte; past it, 504 (or an error event in a stream)."""
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_BODY_LIMIT
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    tensor_parallel: int = 1
    """Processes the model is split over (`torchrun --nproc-per-node N`, inside a process group
    joined before loading; see `tensor_parallel.py`)."""

    def __post_init__(self) -> None:
        bounds = [
            ("--max-batch-size", self.max_batch_size, 1),
            ("--batch-window-ms", self.batch_window_ms, 0),
            ("--max-queue", self.max_queue, 1),
            ("--max-body-bytes", self.max_body_bytes, 1),
            ("--port", self.port, 0),
            ("--tensor-parallel", self.tensor_parallel, 1),
        ]
        for flag, value, least in bounds:
            if value < least:
                raise ValueError(f"{flag} must be >= {least}, got {value}")
        if self.port > 65535:
            raise ValueError(f"--port must be at most 65535, got {self.port}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"--request-timeout must be > 0 seconds, got {self.request_timeout_s}")
        if self.api_key == "":
            raise ValueError("--api-key is empty; give a key, or none for an open server")

    @property
    def loopback_only(self) -> bool:
        """Whether the server is reachable only from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def with_api_key_from_environment(self) -> ServeSettings:
        """These settings with `DYLLM_API_KEY` as the key when none was given."""
        key = os.environ.get(API_KEY_VARIABLE)
        return replace(self, api_key=key) if self.api_key is None and key else self


@dataclass
class ServedModel:
    """The model a server runs, under the name clients use, with its default policy."""

    name: str
    model: DiffusionTransformer
    default_policy: PolicySpec
    default_policy_text: str = "dense"
    policy_arguments: Sequence[str] = field(default_factory=tuple)
    tensor_parallel: int = 1
    """Processes the model is split over (1: this process holds all of it)."""

    @property
    def family(self) -> str:
        return self.model.config.family

    @property
    def context_length(self) -> int:
        """Positions the model holds: the prompt and the answer together."""
        return self.model.config.max_position_embeddings


def load_served_model(settings: ServeSettings) -> ServedModel:
    """Load the checkpoint and check the default policy (ValueError etc. with one line)."""
    import dyllm
    from dyllm.reference.registry import BUILTIN_MODELS, resolve_model_path

    folder = resolve_model_path(settings.model)
    model = dyllm.load(
        folder,
        device=settings.device,
        dtype=settings.dtype,
        tensor_parallel=settings.tensor_parallel,
    )
    model.eval()
    name = settings.served_model_name or (
        settings.model if settings.model in BUILTIN_MODELS else Path(folder).resolve().name
    )
    spec = parse_policy_spec(
        settings.policy, settings.policy_args, family=model.config.family, from_request=False
    )
    return ServedModel(
        name,
        model,
        spec,
        settings.policy,
        tuple(settings.policy_args),
        tensor_parallel=settings.tensor_parallel,
    )
