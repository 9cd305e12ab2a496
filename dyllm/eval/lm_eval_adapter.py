"""The lm-eval `LM` subclass registered as `dyllm`: generate_until with any saliency policy.

Model arguments (`--model_args key=value,...`): `pretrained` (checkpoint folder or built-in name,
default llada-ref), `device`, `dtype`, `batch_size`, `policy` (a registered name, default dense;
`DYLLM_PLUGINS` loads users' own) with the parameters it registers (`dyllm policies` lists
them: `tau`, `k`, ...), and sampler options under
`generate`'s names (`gen_length`, `steps`, `block_length`, `threshold`, `factor`, `remasking`,
`alg`, `temperature`, ...). `gen_length` fixes the answer canvas (the paper: 256); left unset,
each request's `max_gen_toks` sets it.

`batch_size` and `device` may come from `--model_args` or from lm-eval's `--batch_size` /
`--device` (model_args wins; see `arguments.py`). lm-eval's command line always passes its
defaults, batch size 1 and `cuda:0`; in Python, `simple_evaluate` without them gives batch size
16 (the DyLLM paper's throughput setting) and CUDA when present. A CUDA device on a machine
without CUDA runs on the CPU, with a warning.

Every argument is checked before the weights are read: the policy and its parameters, option
names, batch size, device. Each request group's generation options are checked before the first
answer is generated. Errors are `EvalUsageError` (a ValueError) naming the fix.

Each request's answer is the generated text up to the first EOS, cut before the first of the
task's `until` strings. Requests are batched in order of arrival among those with the same
generation arguments; the texts come back in the order of the requests.

Several processes (docs/tensor-parallel.md), launched with `torchrun --nproc-per-node N -m
dyllm.eval ...` (or `accelerate launch -m dyllm.eval ...`, which sets the same environment):

* data parallel (default): each process loads the whole model on its own device
  (cuda:LOCAL_RANK) and reports its rank and the world size to lm-eval, which hands each process
  a share of the requests and gathers the results through `all_gather`, `gather_object` and
  `barrier` below; the first process prints and writes the results;
* tensor parallel (`tensor_parallel=N` in `--model_args`, N processes): the model is split over
  the processes, every process serves every request, and lm-eval sees one process (rank 0 of 1;
  lm-eval then reports from LOCAL_RANK 0 only).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import simple_parse_args_string

import dyllm
from dyllm.distributed import launch
from dyllm.eval import EvalUsageError
from dyllm.eval.arguments import merge_model_arguments, parse_batch_size, pick_device
from dyllm.generation.config import GenerationConfig, check_option_names, resolve_config
from dyllm.generation.validation import validate_config
from dyllm.models.config import ConfigError
from dyllm.models.loader import CheckpointError, checkpoint_folder, read_config, resolve_dtype
from dyllm.policies.plugins import load_plugins, plugin_sources
from dyllm.policies.registry import BuildContext, build_policy, registered_policy
from dyllm.reference.registry import resolve_model_path

ARGUMENT_ERRORS = (ValueError, FileNotFoundError, CheckpointError, ConfigError, KeyError)

GEN_KWARGS_IGNORED = ("do_sample", "max_gen_toks", "until")


@register_model("dyllm")
class DyLLMEvalModel(LM):
    """lm-eval's view of a dyllm model: text in, text out, with a chosen saliency policy."""

    def __init__(
        self,
        pretrained: str = "llada-ref",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 16,
        policy: str = "dense",
        chat: bool = False,
        tensor_parallel: int | str = 1,
        **options: Any,
    ) -> None:
        super().__init__()
        try:
            tensor_parallel = _tensor_parallel(tensor_parallel)
            self.batch_size = parse_batch_size(batch_size)
            folder = checkpoint_folder(resolve_model_path(str(pretrained)))
            family = read_config(folder).family
            load_plugins(plugin_sources())  # DYLLM_PLUGINS: users' own policies
            accepted = {parameter.name for parameter in registered_policy(str(policy)).parameters}
            policy_params = {key: options.pop(key) for key in list(options) if key in accepted}
            self.policy = build_policy(str(policy), policy_params, BuildContext(family=family))
            check_option_names(options)
            if dtype is not None:
                resolve_dtype(dtype)
            target = pick_device(device)
            if launch.join_from_environment(target) and tensor_parallel == 1:
                # data parallel: lm-eval shares the requests out by these two
                self._rank, self._world_size = launch.rank(), launch.world_size()
                target = str(launch.process_device(torch.device(target).type))
            self.model = launch.agree(
                lambda: dyllm.load(
                    folder, device=target, dtype=dtype, tensor_parallel=tensor_parallel
                )
            )
            self._device = next(self.model.parameters()).device
        except EvalUsageError:
            raise
        except ARGUMENT_ERRORS as error:
            raise EvalUsageError(f"--model_args: {_message(error)}") from error
        self.options = options
        self.chat = bool(chat)

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> DyLLMEvalModel:
        """lm-eval's `--model_args` string plus its own flags, without duplicate arguments."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict | None = None
    ) -> DyLLMEvalModel:
        """`batch_size` / `device` from model args, else from lm-eval's flags (see arguments)."""
        return cls(**merge_model_arguments(arg_dict, additional_config))

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Data parallel: every process's `tensor` concatenated along dim 0 (scalars stacked)."""
        if self._world_size == 1:
            return tensor
        rows = tensor.reshape(1) if tensor.dim() == 0 else tensor.contiguous()
        parts = [torch.empty_like(rows) for _ in range(self._world_size)]
        dist.all_gather(parts, rows)
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Data parallel: every process's `obj` on process `dst` (None elsewhere)."""
        if self._world_size == 1:
            return [obj]
        gathered: list[Any] | None = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self._world_size > 1:
            dist.barrier()

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers for (context, gen_kwargs) requests, cut at the first `until` string."""
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for number, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(number)
        plans = [(numbers, self._options_for(requests[numbers[0]])) for numbers in groups.values()]
        for numbers, options in plans:
            stops = _stop_strings(requests[numbers[0]].args[1])
            for start in range(0, len(numbers), self.batch_size):
                chunk = numbers[start : start + self.batch_size]
                texts = self._generate([requests[n].args[0] for n in chunk], options)
                for number, text in zip(chunk, texts, strict=True):
                    answers[number] = _cut(text, stops)
                    self.cache_hook.add_partial(
                        "generate_until", requests[number].args, answers[number]
                    )
        return [answer if answer is not None else "" for answer in answers]

    def _generate(self, prompts: list[str], options: dict[str, Any]) -> list[str]:
        result = dyllm.generate(self.model, prompts, policy=self.policy, chat=self.chat, **options)
        if result.texts is None:
            raise EvalUsageError(
                "the checkpoint has no tokenizer files, so lm-eval's text prompts cannot be "
                "encoded; use a folder with tokenizer.json (or vocab.json and merges.txt)"
            )
        return result.texts

    def _options_for(self, request: Instance) -> dict[str, Any]:
        """Model-argument options, then the request's sampling options where they are unset;
        checked as `generate` would check them, before anything is generated."""
        gen_kwargs = request.args[1]
        options = dict(self.options)
        extra = {k: v for k, v in gen_kwargs.items() if k not in GEN_KWARGS_IGNORED}
        if gen_kwargs.get("do_sample") is False:
            extra["temperature"] = 0.0
        try:
            if "gen_length" not in options and "max_gen_toks" in gen_kwargs:
                options["gen_length"] = int(gen_kwargs["max_gen_toks"])
            check_option_names(extra)
            for key, value in extra.items():
                options.setdefault(key, value)
            defaults = self.model.generation_defaults
            resolved = resolve_config(
                GenerationConfig(**options), self.model.config.family, defaults
            )
            validate_config(resolved, self.model.config)
        except ValueError as error:
            task = getattr(request, "task_name", None) or "a task"
            raise EvalUsageError(
                f"the generation options of {task} ({options}): {_message(error)}"
            ) from error
        return options

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "dyllm serves generate_until tasks only (e.g. gsm8k): a masked diffusion LM has no "
            "left-to-right log-likelihood; choose a generative task"
        )

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        raise NotImplementedError(
            "dyllm serves generate_until tasks only: perplexity needs a left-to-right "
            "likelihood, which a masked diffusion LM does not define"
        )


def _tensor_parallel(value: int | str) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1 or str(size) != str(value).strip():
        raise EvalUsageError(
            f"tensor_parallel must be a number of processes (1, 2, ...), got {value!r}"
        )
    return size


def _message(error: Exception) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def _stop_strings(gen_kwargs: dict[str, Any]) -> list[str]:
    until = gen_kwargs.get("until", [])
    return [until] if isinstance(until, str) else list(until)


def _cut(text: str, stops: list[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        if stop and stop in text:
            cut = min(cut, text.index(stop))
    return text[:cut]
