"""Test-wide settings: one torch thread.

Tests run tiny models, whose ops take microseconds; torch's intra-op threads only add contention
there (one sampler test went from 1.2 s to 0.01 s on a loaded 2-core machine with one thread).
The real Hugging Face files the tests read are vendored under `fixtures/hf` (see its README).
"""

import torch

torch.set_num_threads(1)
