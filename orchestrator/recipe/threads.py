"""How many CPU threads torch uses inside a trial or a stage task."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cpu_threads(cpus: float) -> Iterator[None]:
    """torch's intra-op threads set to the CPUs a trial or task was given (at least one), then restored.

    Ray starts a task with ``OMP_NUM_THREADS`` set from its ``num_cpus``, while an in-process
    (``--local``) run would use every core; a different thread count splits the float reductions
    differently, and the trial's numbers drift. Setting the same count in both modes makes a trial
    compute the same numbers wherever it runs, and two trials running at once each keep their own.
    """
    import torch  # here, so that the driver's modules that import this stay torch-free

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, math.floor(cpus)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
