"""Test-wide settings.

Tests run tiny models, whose ops take microseconds; torch's intra-op threads only add contention
there (one sampler test went from 1.2 s to 0.01 s on a loaded 2-core machine with one thread).
"""

import torch

torch.set_num_threads(1)
