"""The math libraries' CPU code paths, pinned where a run starts, so that its numbers travel.

torch's CPU kernels are chosen per machine: ATen's vectorised kernels (softmax, reductions, the
elementwise ops) by the CPU's widest vector unit, MKL's matrix products and FFTs by the vendor and the
vector unit, oneDNN's convolutions and GELU by the vector unit. Each choice sums in another order, so
the same seed gave other weights, and another best.json, on an AVX2 machine than on this AVX-512 one.
The pins below name one path that every x86-64 CPU with AVX2 (Intel or AMD) runs alike. Measured with
torch 2.11.0 (MKL 2024.2, oneDNN 3.10.2) on an AMD EPYC with AVX-512, one tiny AAVS forward and
backward pass, one variable offered another path at a time (tests/test_kernels.py holds it):

- ``ATEN_CPU_CAPABILITY``: ``default``, ``avx2`` and ``avx512`` give three different gradients
  (``avx512`` is the machine's own choice); pinned to ``avx2``.
- ``MKL_CBWR`` (MKL's conditional numerical reproducibility): any setting moves the gradients. MKL
  honours its ISA branches (``AVX2``, ``AVX512``) on Intel CPUs only: on this AMD one, ``MKL_VERBOSE=1``
  shows ``CNR:AUTO`` for ``MKL_CBWR=AVX2``, the branch MKL picks for the machine, and Intel's
  documentation says so. ``COMPATIBLE`` (SSE2, no approximate reciprocals) is the one branch every
  vendor's CPU runs alike; pinned to it. ``MKL_DYNAMIC=FALSE`` keeps MKL from choosing its own thread
  count per call (a condition of reproducible results in MKL's documentation; the thread count itself
  is the trial's, ``threads.cpu_threads``).
- ``ONEDNN_MAX_CPU_ISA``: ``AVX2`` moves the convolutions and GELU from the machine's AVX-512 kernels
  (``ONEDNN_VERBOSE=1``: ``jit:avx2`` convolution and eltwise, the only oneDNN primitives the tiny
  network runs); pinned to ``AVX2``.

The variables are read when each library first computes, so they go into the environment at a
program's start, before torch is imported (``aavs.orchestrator.cli.main``), and reach the Ray workers
through it: a local Ray is started by the pinned process and its workers inherit its environment, a
joined cluster's get them in the job's ``runtime_env`` (``aavs.orchestrator.ray_local``).

The pins win over the user's own values of those variables (a run's numbers should not depend on a
shell's leftovers); ``AAVS_FAST_KERNELS=1`` lifts them all, leaving every library its own choice (and
the user's variables as they are). It is an environment variable, not an experiment-file key, because
it must act before torch is imported, and commands that import torch before reading a file
(``aavs predict``, ``aavs evaluate``) would otherwise compute unpinned. Lifting the pins makes a run
faster on wide vector units, and its numbers those of its machine only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from aavs.datasets.errors import InputError

# Each library's variable and the path it is pinned to (the module docstring says why each).
PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
FAST_KERNELS = "AAVS_FAST_KERNELS"


def pins_lifted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``AAVS_FAST_KERNELS`` lifts the pins: ``1`` lifts them, ``0`` or unset keeps them."""
    value = environ.get(FAST_KERNELS, "0").strip()
    if value not in ("0", "1", ""):
        raise InputError(f"environment variable {FAST_KERNELS}={value!r}: expected 1 (lift the kernel pins) or 0")
    return value == "1"


def pin_kernels(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Write :data:`PINS` into ``environ`` unless ``AAVS_FAST_KERNELS=1``; the user's values they replaced
    (name to value), so that the caller can say so. Call it before torch is imported."""
    if pins_lifted(environ):
        return {}
    replaced = {name: environ[name] for name, value in PINS.items() if environ.get(name, value) != value}
    environ.update(PINS)
    return replaced


def worker_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What a Ray worker's environment needs to compute as this process does: the pins as this process
    has them, and ``AAVS_FAST_KERNELS`` where it lifts them. Empty when this process was not pinned (a
    library caller that imported torch itself): its workers then keep their own environment, as it does."""
    env = {name: environ[name] for name in PINS if environ.get(name) == PINS[name]}
    if environ.get(FAST_KERNELS):
        env[FAST_KERNELS] = environ[FAST_KERNELS]
    return env
