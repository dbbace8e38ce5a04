"""The fused CPU kernels of ``kernels.c``: built with the system C compiler on first use, loaded
with ctypes, and run over blocks of the tensor on PyTorch's OpenMP threads.

Why not a PyTorch extension: these loops need no PyTorch or Python headers, so a plain C file
compiles in under two seconds, where a C++ extension against torch takes about a minute per
machine. Linked against the OpenMP runtime PyTorch has loaded, the loops' parallel regions reuse
PyTorch's threads; where there is none (or it does not link), a build without OpenMP runs its
blocks on Python threads (ctypes releases the GIL during a call). ``torch.compile`` was measured
on the same passes and was slower than eager PyTorch on the CPU.

The library is built once per (source, compiler, CPU, runtime) into ``$SPARSE_LIGHTNING_CACHE``
(default ``~/.cache/sparse_lightning``) under a name that hashes them, written to a temporary
name and renamed, so processes that start together (DDP ranks, a parallel sweep) and cluster
nodes with different CPUs sharing one home directory never load a half-written or foreign
library. With no compiler, or ``SPARSE_LIGHTNING_NATIVE=0``, the PyTorch formulation runs
instead (same formulas; its noise comes from PyTorch generators); the reason is logged once.
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
from typing import Any

import torch

from sparse_lightning.layers.threads import pool

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
BLOCK = 32768  # elements per block; kernels.c's BLOCK
PHILOX_LANES = 1024  # kernels.c's: a draw of n numbers takes ceil(n / (4 PHILOX_LANES)) of these
DISABLE_ENV = "SPARSE_LIGHTNING_NATIVE"
CACHE_ENV = "SPARSE_LIGHTNING_CACHE"
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
FLAGS += ["-fPIC"]
OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp5")

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_U32 = ctypes.c_uint32
_U64 = ctypes.c_uint64
SIGNATURES = {  # (..., n, next_block[, partials]): see kernels.c
    "vd_forward": [_P, _P, _P, _P, _I, _P, _P],
    "vd_backward": [_P, _P, _P, _P, _F, _F, _P, _P, _I, _P],
    "vd_sample": [_P, _P, _P, _I, _P],
    "philox4x32_10": [_P, _P, _P],
    "philox_uniform": [_P, _I, _U32, _U32, _U64, _F, _F, _P],
    "philox_normal": [_P, _I, _U32, _U32, _U64, _P],
    "vd_sample_philox": [_P, _P, _P, _I, _U32, _U32, _U64, _P],
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


def openmp_runtime() -> str | None:
    """The OpenMP runtime PyTorch has loaded into this process (Linux), if any: linking the
    kernels against this very file (by its soname) makes their parallel regions run on PyTorch's
    threads, which spin for a while after each op; a second runtime would fight them for the
    cores."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        fields = line.split()
        name = Path(fields[-1]).name if len(fields) >= 6 else ""
        if name.startswith(OPENMP_RUNTIMES) and ".so" in name:
            return fields[-1]
    return None


def _build(compiler: str, runtime: str | None) -> Path:
    """Compile kernels.c into the cache (if not there yet) and return the library's path: with
    OpenMP, linked against ``runtime``, if one is given."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    parts = [SOURCE.read_text(), " ".join(FLAGS), version, _cpu_identity(), str(runtime)]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sparse_lightning")
    target = cache / f"kernels-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        # Compile with OpenMP but link only ``runtime`` (not the compiler's own -lgomp).
        objects = f"{partial}.o"
        openmp = ["-fopenmp"] if runtime else []
        run = {"capture_output": True, "text": True, "check": True}
        subprocess.run([compiler, *FLAGS, *openmp, "-c", "-o", objects, str(SOURCE)], **run)
        link = [objects, runtime, f"-Wl,-rpath,{Path(runtime).parent}"] if runtime else [objects]
        subprocess.run([compiler, "-shared", "-o", partial, *link], **run)
        os.replace(partial, target)
    finally:
        for leftover in (partial, f"{partial}.o"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return target


def _load(compiler: str, runtime: str | None) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_build(compiler, runtime)))
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    lib.kernels_use_openmp.argtypes, lib.kernels_use_openmp.restype = [], ctypes.c_int
    return lib


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (logged once) where they cannot be built or are disabled:
    with PyTorch's OpenMP runtime where it has one that links, else threaded by ``run_blocks``."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        log.info("fused CPU kernels disabled by %s=0; using PyTorch ops", DISABLE_ENV)
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("no C compiler found (cc, gcc, clang, $CC): VD/l0 use slower PyTorch ops")
        return None
    errors = []
    for runtime in dict.fromkeys([openmp_runtime(), None]):
        try:
            return _load(compiler, runtime)
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(getattr(error, "stderr", "") or str(error))
    log.warning("could not build %s (%s): VD/l0 use slower PyTorch ops", SOURCE.name, errors)
    return None


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
    """Run ``kernel(next_block)`` over the blocks of ``numel`` elements. Built with OpenMP, the
    kernel's own parallel region (PyTorch's threads) takes the blocks. Otherwise
    ``torch.get_num_threads()`` threads (the caller is one) take them from the shared counter,
    and a pool worker that has not started when the caller runs out of blocks is cancelled: a
    thread the OS runs late (e.g. behind an OpenMP thread still spinning after a PyTorch op)
    costs nothing but the blocks it did not take."""
    counter = ctypes.c_int64(0)
    next_block = ctypes.cast(ctypes.byref(counter), ctypes.c_void_p)
    if library().kernels_use_openmp():
        kernel(next_block)  # its parallel region uses PyTorch's threads
        return
    helpers = min(torch.get_num_threads(), -(-numel // BLOCK)) - 1
    futures = [pool().submit(kernel, next_block) for _ in range(helpers)]
    kernel(next_block)
    for future in futures:
        if not future.cancel():
            future.result()


def run_summed(kernel: Callable[..., None], numel: int, *args: Any) -> torch.Tensor:
    """Run ``kernel(*args, next_block, partials)``, which writes one partial sum per block, over
    ``numel`` elements; the total (float64, the same whichever threads ran which block)."""
    partials = torch.empty(-(-numel // BLOCK), dtype=torch.float64)
    run_blocks(lambda next_block: kernel(*args, next_block, partials.data_ptr()), numel)
    return partials.sum()


def incoming(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A backward's incoming gradient as the kernels read it: contiguous, zeros if None."""
    return torch.zeros_like(like) if grad is None else grad.contiguous()
