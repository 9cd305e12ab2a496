"""Test-wide settings: one torch thread, and the real Hugging Face files must be present.

Tests run tiny models, whose ops take microseconds; torch's intra-op threads only add contention
there (one sampler test went from 1.2 s to 0.01 s on a loaded 2-core machine with one thread).
"""

import pytest
import torch

from tests.checkpoints import DREAM_DIR, HF, LLADA_DIR

torch.set_num_threads(1)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The real Hugging Face files are test data; without them the run stops, not skips."""
    missing = [d for d in (LLADA_DIR, DREAM_DIR) if not (d / "config.json").is_file()]
    if missing:
        pytest.exit(
            f"the tests read the real config and tokenizer files from {HF}, which lacks "
            f"{', '.join(d.name for d in missing)}; point DYLLM_SHARED at the folder holding hf/",
            returncode=4,
        )
