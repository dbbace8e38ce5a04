"""One small thread pool for the CPU work that PyTorch does not parallelise for us (noise
streams, the fused kernels): their calls release the GIL, so Python threads run them in
parallel. One pool per process, started on first use (and anew in a forked child, which
inherits the pool object but none of its threads)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

MAX_WORKERS = 15
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def pool() -> ThreadPoolExecutor:
    """This process's pool: one worker fewer than the CPUs (the calling thread works too)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        workers = max(1, min(MAX_WORKERS, (os.cpu_count() or 1) - 1))
        _POOL = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="sparse-cpu"))
    return _POOL[1]
