"""Write a trained reference model as a complete Hugging Face checkpoint folder.

`config.json` and `model.safetensors` come from `dyllm.models.save_pretrained` (the family's real
keys); this module adds the tokenizer files and `generation_config.json`, whose keys follow the
real files (Dream's `alg`, `steps`, `eps`, `temperature`, ...; LLaDA's sampler arguments
`steps`, `gen_length`, `block_length`, `remasking`) and hold the defaults the model is meant to be
sampled with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dyllm.models import DiffusionTransformer, save_pretrained
from dyllm.reference.vocab import special_token_ids, write_tokenizer_files


def generation_defaults(family: str, gen_length: int) -> dict[str, Any]:
    """Sampler defaults: greedy, one token per step over one block covering the answer region."""
    ids = special_token_ids(family)
    common = {
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "mask_token_id": ids["mask"],
        "temperature": 0.0,
        "steps": gen_length,
    }
    if family == "llada":
        return {
            **common,
            "gen_length": gen_length,
            "block_length": gen_length,
            "remasking": "low_confidence",
        }
    return {
        **common,
        "max_new_tokens": gen_length,
        "alg": "entropy",
        "alg_temp": None,
        "eps": 1e-3,
        "top_p": None,
        "top_k": None,
    }


def export_checkpoint(model: DiffusionTransformer, folder: str | Path, gen_length: int) -> Path:
    """Write weights, config, tokenizer and generation defaults of `model` into `folder`."""
    folder = Path(folder)
    family = model.config.family
    save_pretrained(model, folder)
    write_tokenizer_files(family, folder)
    defaults = generation_defaults(family, gen_length)
    (folder / "generation_config.json").write_text(json.dumps(defaults, indent=2) + "\n")
    return folder
