"""How many trials of a stage are still training at each epoch: all of them under FIFO and the
population-based schedulers, an expected number under ASHA. ``aavs estimate`` (:mod:`.estimate`)
sums epochs, frames and FLOPs over these counts.

**ASHA** (Ray Tune's ``AsyncHyperBandScheduler``, as :mod:`.schedulers` builds it: ``max_t`` = the
stage's epochs, one bracket). Its rungs are at ``r_k = grace_period * rf^k`` epochs for
``k = 0 .. K-1``, ``K = int(log(max_t / grace_period) / log(rf) + 1)`` (Ray's ``_Bracket``), and a
trial runs on past ``r_k`` only if its metric there is at least the ``(1 - 1/rf)`` quantile (numpy's
linear interpolation) of the results *earlier* trials recorded at that rung; the first trial to reach a
rung always continues. A trial stopped at ``r_k`` has trained ``r_k`` epochs; a survivor of every
rung trains ``max_t``.

The expected share: assume the trials' metrics at a rung are exchangeable (their arrival order says
nothing about their ranks). Then the rank of the i-th arrival among the first i is uniform and
independent of the others' (the classical record-value argument), so with ``m = i - 1`` earlier
results and the cutoff at position ``p = (m - 1) q`` of them (``q = 1 - 1/rf``), the arrival lies
above ``m - ceil(p)`` of the order statistics' gaps with certainty and, between the two values the
cutoff interpolates, above the cutoff with probability ``ceil(p) - p`` (a value uniformly placed in
that gap). So::

    P(continue | i-th arrival) = 1                        for i = 1
                               = (m - (m - 1) q) / (m + 1)  for i >= 2, m = i - 1

(-> 1/rf for many trials). The survivors of a rung are a sum of independent Bernoulli draws, so the
number of arrivals at the next rung has a Poisson-binomial distribution; :func:`asha_running` carries
that distribution rung by rung (exact under the assumption) and returns the expected number of trials
training in each epoch. Beyond :data:`EXACT_TRIALS` trials it carries the expected count alone, through
the sum of the probabilities above: ``1 + (n - 1)(1 - q) + (2q - 1)(H_n - 1)`` survivors of ``n``
arrivals (``H_n`` the harmonic number), which the distribution's spread barely moves at that size. Stated plainly: with ``n`` trials the expected trial-epochs are
``sum_e E[running(e)]``, and their share of ``n * max_t`` is what ASHA saves. What the assumption
leaves out: a searcher that improves (Optuna's TPE) makes later arrivals better, so more of them pass;
the share is then an underestimate.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_TRIALS = 200  # up to this many trials the survivors' distribution is carried exactly


def continue_probability(i: int, reduction_factor: float) -> float:
    """P(the i-th trial to reach a rung continues), i >= 1 (module docstring)."""
    if i <= 1:
        return 1.0
    m, q = i - 1, 1.0 - 1.0 / reduction_factor
    return (m - (m - 1) * q) / (m + 1)


def asha_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The rung milestones below ``max_t``, ascending, as Ray's ``_Bracket`` makes them (bracket 0);
    a milestone at or past ``max_t`` stops nothing that ``max_t`` does not."""
    if reduction_factor <= 1 or grace_period >= max_t:
        return []
    count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return sorted(r for k in range(count) if (r := int(grace_period * reduction_factor**k)) < max_t)


def _survivors(arrivals: np.ndarray, reduction_factor: float) -> np.ndarray:
    """The distribution of a rung's survivors given the distribution of its arrivals (index = count)."""
    out = np.zeros_like(arrivals)
    for n, weight in enumerate(arrivals):
        if weight == 0:
            continue
        dist = np.zeros(n + 1)
        dist[0] = 1.0
        for i in range(1, n + 1):  # Poisson-binomial: add the i-th arrival's Bernoulli draw
            p = continue_probability(i, reduction_factor)
            dist[1:] = dist[1:] * (1 - p) + dist[:-1] * p
            dist[0] *= 1 - p
        out[: n + 1] += weight * dist
    return out


def expected_survivors(arrivals: float, reduction_factor: float) -> float:
    """``sum_i P(continue | i-th arrival)`` for ``arrivals`` arrivals (closed form, module docstring)."""
    if arrivals < 1:
        return arrivals
    q = 1.0 - 1.0 / reduction_factor
    harmonic = math.log(arrivals) + 0.5772156649015329 + 1 / (2 * arrivals)  # H_n, to 1/(12 n^2)
    return 1 + (arrivals - 1) * (1 - q) + (2 * q - 1) * (harmonic - 1)


def asha_running(trials: int, max_t: int, grace_period: int, reduction_factor: float) -> list[float]:
    """Expected trials training in epoch ``e`` (1-based; list index ``e - 1``) of a stage of ``trials``
    trials under ASHA."""
    exact = trials <= EXACT_TRIALS
    dist = np.zeros(trials + 1 if exact else 1)
    dist[-1] = 1.0
    expected = float(trials)
    running, epoch = [], 0
    for milestone in [*asha_rungs(max_t, grace_period, reduction_factor), max_t]:
        if exact:
            expected = float(np.dot(np.arange(trials + 1), dist))
        running += [expected] * (milestone - epoch)
        epoch = milestone
        if exact:
            dist = _survivors(dist, reduction_factor)
        else:
            expected = expected_survivors(expected, reduction_factor)
    return running


def running_trials(trials: int, epochs: int, asha: tuple[int, float] | None) -> list[float]:
    """Trials training in each epoch: every trial in every epoch, or ASHA's expectation for
    ``asha = (grace_period, reduction_factor)``."""
    if asha is None:
        return [float(trials)] * epochs
    return asha_running(trials, epochs, asha[0], asha[1])


def ended_by_epoch(running: list[float]) -> list[float]:
    """Expected trials whose last epoch is ``e`` (same indexing): the drop after it."""
    after = [*running[1:], 0.0]
    return [max(0.0, now - later) for now, later in zip(running, after)]


def waves(trials: int, slots: int) -> int:
    """Rounds of ``slots`` concurrent trials that ``trials`` identical trials take."""
    return math.ceil(trials / max(1, slots))
