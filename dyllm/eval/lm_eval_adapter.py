"""The lm-eval `LM` subclass registered as `dyllm`: generate_until with any saliency policy.

Model arguments (`--model_args key=value,...`): `pretrained` (checkpoint folder or built-in name,
default llada-ref), `device`, `dtype`, `batch_size` (16, the DyLLM paper's throughput setting),
`policy` (a `dyllm.policies.registry` name, default dense) with its parameters (`tau`, `k`,
`prompt_interval`, `gen_interval`, `transfer_ratio`, `warmup_steps`, `prompt_refresh_every`),
and sampler options under `generate`'s names (`gen_length`, `steps`, `block_length`,
`threshold`, `factor`, `remasking`, `alg`, `temperature`, ...). `gen_length` fixes the answer
canvas (the paper: 256); left unset, each request's `max_gen_toks` sets it.

Each request's answer is the generated text up to the first EOS, cut before the first of the
task's `until` strings. Requests are batched in order of arrival among those with the same
generation arguments; the texts come back in the order of the requests.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

import dyllm
from dyllm.generation.config import check_option_names
from dyllm.policies.registry import make_policy

POLICY_PARAMS = (
    "tau",
    "k",
    "prompt_interval",
    "gen_interval",
    "transfer_ratio",
    "warmup_steps",
    "prompt_refresh_every",
    "attention",
)
GEN_KWARGS_IGNORED = ("do_sample", "max_gen_toks", "until")


@register_model("dyllm")
class DyLLMEvalModel(LM):
    """lm-eval's view of a dyllm model: text in, text out, with a chosen saliency policy."""

    def __init__(
        self,
        pretrained: str = "llada-ref",
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int | str = 16,
        policy: str = "dense",
        chat: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.model = dyllm.load(str(pretrained), device=device, dtype=dtype)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        policy_params = {key: options.pop(key) for key in POLICY_PARAMS if key in options}
        self.policy = make_policy(policy, self.model.config.family, **policy_params)
        check_option_names(options)
        self.options = options
        self.chat = bool(chat)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers for (context, gen_kwargs) requests, cut at the first `until` string."""
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for number, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(number)
        for numbers in groups.values():
            gen_kwargs = requests[numbers[0]].args[1]
            options = self._options_for(gen_kwargs)
            stops = _stop_strings(gen_kwargs)
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
            raise ValueError(
                "the checkpoint has no tokenizer files, so lm-eval's text prompts cannot be "
                "encoded; use a folder with tokenizer.json (or vocab.json and merges.txt)"
            )
        return result.texts

    def _options_for(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Model-argument options, then the request's sampling options where they are unset."""
        options = dict(self.options)
        if "gen_length" not in options and "max_gen_toks" in gen_kwargs:
            options["gen_length"] = int(gen_kwargs["max_gen_toks"])
        extra = {k: v for k, v in gen_kwargs.items() if k not in GEN_KWARGS_IGNORED}
        if gen_kwargs.get("do_sample") is False:
            extra["temperature"] = 0.0
        check_option_names(extra)
        for key, value in extra.items():
            options.setdefault(key, value)
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
