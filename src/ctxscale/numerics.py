"""One floating-point code path on every x86-64 CPU with AVX2, so a CPU run gives the same bits on any machine.

MKL (PyTorch's CPU matrix products) and PyTorch's own vectorised kernels choose their SIMD code path by the CPU
they run on (AVX2, AVX-512, ...), and the paths round differently in the last bits. Training the miniature's
tiny models amplifies that: their abilities appear abruptly within a few hundred steps, so a last-bit
difference early on can change what a model has learned by the end. Seen (2026-12-03): config/demo.yaml as
committed gave a common-sense held-out-context MAE of 0.051 on the machine it was tuned on and 0.072 in a fresh
environment on an AMD EPYC (AVX2) machine; there, ``MKL_CBWR=COMPATIBLE`` (MKL's SSE2 path) changes the trained
weights after 40 steps while ``MKL_CBWR=AVX2`` reproduces the default's bits. Pinning both libraries to their
AVX2 path (the commonest x86-64 level) is meant to make training and greedy evaluation on the CPU independent
of the machine; only that one machine has been checked, where AVX2 is also the default. ``MKL_CBWR`` is MKL's
own switch for this ("conditional numerical reproducibility"); ``ATEN_CPU_CAPABILITY`` is PyTorch's. Both take
effect if set before the first tensor operation of the process, which is why :func:`pin_cpu_code_paths` runs at
the start of a step, not at import.
A value the user has set is kept. Other CPUs (ARM, or x86 without AVX2) keep their own single path: their bits
may differ from an AVX2 machine's.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

log = logging.getLogger("ctxscale.numerics")

AVX2_CODE_PATHS = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def cpu_has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this is an x86-64 CPU whose flags include avx2 (read from Linux's /proc/cpuinfo)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "avx2" in line.split() for line in text.splitlines())


def pin_cpu_code_paths(has_avx2: bool | None = None) -> dict[str, str]:
    """Set the AVX2 code path for MKL and PyTorch (unless already set); return the variables in effect."""
    if not (cpu_has_avx2() if has_avx2 is None else has_avx2):
        return {}
    for name, value in AVX2_CODE_PATHS.items():
        os.environ.setdefault(name, value)
    in_effect = {name: os.environ[name] for name in AVX2_CODE_PATHS}
    log.info("CPU code paths: %s", ", ".join(f"{k}={v}" for k, v in in_effect.items()))
    return in_effect
