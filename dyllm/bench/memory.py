"""Peak memory of one generation: CUDA's allocator peak, or the process's resident set on CPU.

On CUDA, `torch.cuda.max_memory_allocated` after a reset is exact. On CPU, torch allocates outside
Python's allocator, so `tracemalloc` sees none of it, and `getrusage`'s high-water mark only ever
rises over the process's life; instead a background thread samples the resident set size from
`/proc/self/statm` every `interval_s` while the generation runs and keeps the maximum (on systems
without /proc, `getrusage`'s process-wide peak stands in, and the result says so).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

import torch

STATM = Path("/proc/self/statm")


def resident_bytes() -> int:
    """The process's current resident set size in bytes."""
    pages = int(STATM.read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Context manager: `peak_bytes` and `kind` of the memory used while it was open."""

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.kind = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_memory_allocated"
        elif STATM.is_file():
            self.kind = "cpu_peak_rss_sampled"
            self.peak_bytes = resident_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.kind = "cpu_process_max_rss"
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, resident_bytes())

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, resident_bytes())
        else:
            # ru_maxrss is KiB on Linux, bytes on macOS
            scale = 1 if sys.platform == "darwin" else 1024
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
