"""Building and loading ``kernels.c``: compiled with the system C compiler on first use, loaded
with ctypes.

Why not a PyTorch extension: these loops need no PyTorch or Python headers, so a plain C file
compiles in under two seconds, where a C++ extension against torch takes about a minute per
machine. Linked against the OpenMP runtime PyTorch has loaded, the loops' parallel regions reuse
PyTorch's threads; where there is none (or it does not link), a build without OpenMP runs its
blocks on Python threads (``native.run_blocks``).

The formulas' constants are not written in the C file: ``constants()`` reads them from the math
modules and the blocking constants below, and the build passes each as a ``-D`` define (floats as
exact hexadecimal literals), so the C code cannot disagree with the PyTorch path.

The library is built once per (source, constants, compiler, CPU, runtime) into
``$SPARSE_LIGHTNING_CACHE`` (default ``~/.cache/sparse_lightning``) under a name that hashes
them, written to a temporary name and renamed, so processes that start together (DDP ranks, a
parallel sweep) and cluster nodes with different CPUs sharing one home directory never load a
half-written or foreign library. With no compiler, or ``SPARSE_LIGHTNING_NATIVE=0``, there is
no library and the ``auto`` backend is the PyTorch one; the reason is logged once.
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
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
BLOCK = 32768  # elements per block (a multiple of 4 PHILOX_LANES and of the KL's log chunk)
PHILOX_LANES = 1024  # a draw of n numbers takes ceil(n / (4 PHILOX_LANES)) of these counters
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
    "l0_forward": [_P, _P, _P, _P, _I, _P, _P],
    "l0_backward": [_P, _P, _P, _P, _F, _F, _P, _P, _I, _P],
}


def constants() -> dict[str, int | float]:
    """The C code's constants, read now from their Python homes: the formulas' from the math
    modules, the blocking from this module."""
    from sparse_lightning.layers import l0
    from sparse_lightning.layers import variational_dropout as vd

    return {
        "BLOCK": BLOCK,
        "PHILOX_LANES": PHILOX_LANES,
        "VD_K1": vd.K1,
        "VD_K2": vd.K2,
        "VD_K3": vd.K3,
        "VD_CLIP": vd.LOG_ALPHA_CLIP,
        "VD_EPS": vd.EPSILON,
        "VD_LOG_GROUP": vd.KL_LOG_GROUP,
        "L0_BETA": l0.BETA,
        "L0_INV_BETA": 1.0 / l0.BETA,
        "L0_GAMMA": l0.GAMMA,
        "L0_ZETA": l0.ZETA,
        "L0_PENALTY_SHIFT": l0.PENALTY_SHIFT,
    }


def defines() -> list[str]:
    """``constants()`` as compiler flags: integers as they are, floats as exact hexadecimal
    float32 literals (the value PyTorch's float32 ops use for the same Python float)."""
    flags = []
    for name, value in constants().items():
        literal = str(value) if isinstance(value, int) else f"{float(value).hex()}f"
        flags.append(f"-D{name}=({literal})")
    return flags


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def compiler() -> str | None:
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


def build(cc: str, runtime: str | None) -> Path:
    """Compile kernels.c into the cache (if not there yet) and return the library's path: with
    OpenMP, linked against ``runtime``, if one is given."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    flags = [*FLAGS, *defines()]
    parts = [SOURCE.read_text(), " ".join(flags), version, _cpu_identity(), str(runtime)]
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
        subprocess.run([cc, *flags, *openmp, "-c", "-o", objects, str(SOURCE)], **run)
        link = [objects, runtime, f"-Wl,-rpath,{Path(runtime).parent}"] if runtime else [objects]
        subprocess.run([cc, "-shared", "-o", partial, *link], **run)
        os.replace(partial, target)
    finally:
        for leftover in (partial, f"{partial}.o"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return target


def load(cc: str, runtime: str | None) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build(cc, runtime)))
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    lib.kernels_use_openmp.argtypes, lib.kernels_use_openmp.restype = [], ctypes.c_int
    return lib


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (logged once) where they cannot be built or are disabled:
    with PyTorch's OpenMP runtime where it has one that links, else threaded by
    ``native.run_blocks``."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        log.info("fused CPU kernels disabled by %s=0; using PyTorch ops", DISABLE_ENV)
        return None
    cc = compiler()
    if cc is None:
        log.warning("no C compiler found (cc, gcc, clang, $CC): VD/l0 use slower PyTorch ops")
        return None
    errors = []
    for runtime in dict.fromkeys([openmp_runtime(), None]):
        try:
            return load(cc, runtime)
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(getattr(error, "stderr", "") or str(error))
    log.warning("could not build %s (%s): VD/l0 use slower PyTorch ops", SOURCE.name, errors)
    return None
