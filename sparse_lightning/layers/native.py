"""The fused CPU kernels of ``kernels.c``: built with the system C compiler on first use, loaded
with ctypes, and run over blocks of the weight tensor by a few threads.

Why not a PyTorch extension: these loops need no PyTorch or Python headers, so a plain C file
compiles in under a second, where a C++ extension against torch takes about a minute per
machine; ctypes releases the GIL during a call, so Python threads run blocks in parallel.
``torch.compile`` was measured on the same passes and was slower than eager PyTorch on the CPU.

The library is built once per (source, compiler, CPU) into ``$SPARSE_LIGHTNING_CACHE`` (default
``~/.cache/sparse_lightning``) under a name that hashes all three, written to a temporary name and
renamed, so processes that start together (DDP ranks, a parallel sweep) and cluster nodes with
different CPUs sharing one home directory never load a half-written or foreign library. With no
compiler, or ``SPARSE_LIGHTNING_NATIVE=0``, the PyTorch formulation runs instead (same values and
gradients, about twice the time); the reason is logged once.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch

from sparse_lightning.layers.threads import pool

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
BLOCK = 32768  # elements per block; kernels.c's BLOCK
DISABLE_ENV = "SPARSE_LIGHTNING_NATIVE"
CACHE_ENV = "SPARSE_LIGHTNING_CACHE"
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
FLAGS += ["-fPIC", "-shared"]

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
SIGNATURES = {  # (..., n, next_block[, partials]): see kernels.c
    "vd_forward": [_P, _P, _P, _P, _I, _P, _P],
    "vd_backward": [_P, _P, _P, _P, _F, _F, _P, _P, _I, _P],
    "vd_sample": [_P, _P, _P, _I, _P],
    "l0_forward": [_P, _P, _P, _P, _F, _I, _P, _P],
    "l0_backward": [_P, _P, _P, _P, _F, _F, _F, _P, _P, _I, _P],
}


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(compiler: str) -> Path:
    """Compile kernels.c into the cache (if not there yet) and return the library's path."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_identity()]).encode()
    ).hexdigest()[:20]
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparse_lightning")
    target = cache / f"kernels-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, "-o", partial, str(SOURCE)],
            capture_output=True,
            text=True,
            check=True,
        )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (logged once) where they cannot be built or are disabled."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        log.info("fused CPU kernels disabled by %s=0; using PyTorch ops", DISABLE_ENV)
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("no C compiler found (cc, gcc, clang, $CC): VD/l0 use slower PyTorch ops")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        log.warning("could not build %s (%s): VD/l0 use slower PyTorch ops", SOURCE.name, detail)
        return None
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    return lib


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can run on ``tensors``: CPU, float32, contiguous, same size, built."""
    first = tensors[0]
    return (
        all(
            t.device.type == "cpu"
            and t.dtype == torch.float32
            and t.is_contiguous()
            and t.numel() == first.numel()
            for t in tensors
        )
        and library() is not None
    )


def run_blocks(kernel: Callable[[ctypes.c_void_p], None], numel: int) -> None:
    """Run ``kernel(next_block)`` on ``torch.get_num_threads()`` threads (the caller is one) that
    take the blocks of ``numel`` elements from one shared counter. A worker that has not started
    by the time the caller runs out of blocks is cancelled, so a pool thread that the OS
    schedules late (e.g. behind an OpenMP thread still spinning after a PyTorch op) costs
    nothing but the blocks it did not take."""
    counter = ctypes.c_int64(0)
    next_block = ctypes.cast(ctypes.byref(counter), ctypes.c_void_p)
    helpers = min(torch.get_num_threads(), -(-numel // BLOCK)) - 1
    futures = [pool().submit(kernel, next_block) for _ in range(helpers)]
    kernel(next_block)
    for future in futures:
        if not future.cancel():
            future.result()


def partial_sums(numel: int) -> torch.Tensor:
    """One float64 slot per block, for a kernel's per-block sums."""
    return torch.empty(-(-numel // BLOCK), dtype=torch.float64)


def pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()
