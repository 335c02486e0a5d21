"""The meta-bandit: which candidate rule serves each decision.

Every candidate rule reads the same statistics, so every candidate learns from every
feedback; what the meta-bandit learns is which one to trust. It compares them on *all*
traffic, not only on the decisions each one served, by off-policy evaluation: when option
``a`` was served with probability ``mu(a)`` (the mixture actually used) and candidate ``c``
would have played it with probability ``pi_c(a)``, the importance weight
``w_c = min(pi_c(a) / (mu(a) + ix), weight_cap)`` turns the observed reward ``r`` (scaled to
[0, 1]) into an estimate of ``c``'s value:

* ``ips``: ``sum(w_c * r) / n`` (Horvitz-Thompson; unbiased before capping);
* ``snips``: ``sum(w_c * r) / sum(w_c)`` (self-normalised: a little bias, much less
  variance, Swaminathan & Joachims 2015).

Capping the weights bounds the variance a single unlikely decision can add (Ionides 2008).

The choice among candidates is one of:

* ``exp3ix``: exponential weights on the estimated cumulative gains, ``q_c ∝ exp(eta *
  n * V_c)`` with the anytime Hedge rate ``eta = sqrt(8 ln C / n)``, and implicit
  exploration ``ix = eta / 2`` added to every denominator (EXP3-IX, Neu 2015, in its
  experts form). It concentrates on the best candidate at the rate its lead allows.
* ``thompson``: Thompson sampling over the estimates, each candidate's value drawn from a
  normal around its estimate with the variance of a bounded mean, ``1 / (4 n_eff)``; the
  shares are the probabilities of winning, by Monte Carlo.

Either way an exploration floor keeps every candidate at ``exploration_floor / C`` or more,
so no estimate starves and no logged propensity reaches 0.

The statistics and the ``exp3ix`` arithmetic live in :class:`syntra_core.meta.MetaCore`
(C arrays, ``nogil`` updates; shares are recomputed lazily, before the next decision that
reads them); this class validates and documents, and computes the ``thompson`` shares.

>>> meta = MetaBandit(["steady", "erratic"], exploration_floor=0.1)
>>> for _ in range(500):
...     # "steady" would have played the served option, "erratic" rarely: it is rewarded.
...     meta.observe([0.9, 0.1], 0.5, 1.0)
...     meta.observe([0.1, 0.9], 0.5, 0.0)
>>> shares = meta.shares()
>>> shares[0] > 0.9 and abs(sum(shares) - 1) < 1e-12 and min(shares) >= 0.05
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from syntra_core.meta import ESTIMATORS, METHODS, MetaCore

THOMPSON_DRAWS = 256

__all__ = ["ESTIMATORS", "METHODS", "THOMPSON_DRAWS", "MetaBandit"]


class MetaBandit:
    """Off-policy estimates of each candidate's value, and the shares that serve them.

    ``names`` are the candidates. ``initial`` (a name) gets a head start of
    ``prior_trials`` pseudo-rounds at reward 1, so it serves first until the evidence
    says otherwise. Deterministic: the same observations give the same shares.
    """

    def __init__(self, names: Sequence[str], *, method: str = "exp3ix", estimator: str = "snips",
                 weight_cap: float = 20.0, exploration_floor: float = 0.05,
                 learning_rate: float | None = None, initial: str | None = None,
                 prior_trials: int = 0, seed: int = 0):
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"meta-bandit candidates must be distinct and at least one, got {names!r}")
        if initial is not None and initial not in names:
            raise ValueError(f"initial candidate {initial!r} is not one of {names!r}")
        # The core checks the method, estimator and numbers (with the same messages).
        self._core = MetaCore(len(names), method, estimator, weight_cap, exploration_floor, learning_rate,
                              -1 if initial is None else names.index(initial), int(prior_trials))
        self.names = names
        self.method = method
        self.estimator = estimator
        self.weight_cap = float(weight_cap)
        self.exploration_floor = float(exploration_floor)
        self.learning_rate = learning_rate
        self.seed = seed
        self.initial = initial
        self.prior_trials = int(prior_trials)
        # One call a feedback: straight to the core, without this class's wrapper around it.
        self.observe = self._core.observe

    # --- statistics (read-only views of the core) -------------------------------------------

    @property
    def trials(self) -> list[int]:
        """Decisions each candidate served."""
        return self._core.trials()

    @property
    def weighted_gain(self) -> list[float]:
        """Each candidate's sum of ``w_c * r``."""
        return self._core.weighted_gain()

    @property
    def weight_sum(self) -> list[float]:
        """Each candidate's sum of ``w_c``."""
        return self._core.weight_sum()

    @property
    def observations(self) -> int:
        """Feedbacks observed."""
        return self._core.observations

    # --- serving ----------------------------------------------------------------------

    def core(self) -> MetaCore:
        """The compiled core, its shares current: what the policy's compiled mixing reads."""
        core = self._core
        if core.stale and not core.exp3ix:
            core.load_raw(self._thompson_raw())
        return core

    def shares(self) -> list[float]:
        """Each candidate's probability of serving the next decision."""
        return self.core().shares()

    def choose(self, u: float) -> int:
        """The candidate that serves, for a uniform draw ``u`` in [0, 1)."""
        return self.core().choose(u)

    def served(self, candidate: int) -> None:
        self._core.served(candidate)

    # --- learning ---------------------------------------------------------------------

    def observe(self, target_probabilities: Sequence[float], logging_probability: float, reward: float) -> None:
        """Account one feedback: each candidate's probability of the served option, the
        probability it was served with, and the reward scaled to [0, 1]."""
        self._core.observe(target_probabilities, logging_probability, reward)

    def values(self) -> list[float | None]:
        """Each candidate's estimated value (reward scaled to [0, 1]); None before evidence."""
        return self._core.values()

    def _thompson_raw(self) -> list[float]:
        """Each candidate's Monte-Carlo wins (plus a 1/C pseudo-win, so none is 0)."""
        count = len(self.names)
        head = [0.0] * count
        if self.initial is not None:
            head[self.names.index(self.initial)] = float(self.prior_trials)
        means = np.empty(count)
        stds = np.empty(count)
        for index, (gain, weights) in enumerate(zip(self.weighted_gain, self.weight_sum)):
            # Pseudo-observations: the head start at reward 1, plus one at 1/2 so a
            # candidate without evidence is a fair coin, not a certainty.
            n_eff = weights + head[index] + 1.0
            means[index] = (gain + head[index] + 0.5) / n_eff
            stds[index] = math.sqrt(0.25 / n_eff)
        rng = np.random.Generator(np.random.PCG64([self.seed, self.observations]))
        draws = rng.standard_normal((THOMPSON_DRAWS, count)) * stds + means
        wins = np.bincount(np.argmax(draws, axis=1), minlength=count).astype(float)
        return list(wins + 1.0 / count)

    # --- state ------------------------------------------------------------------------

    def report(self) -> dict[str, dict[str, Any]]:
        """Per candidate: decisions served, estimated value and current share."""
        return {
            name: {"trials": trials, "value": value, "share": share}
            for name, trials, value, share in zip(self.names, self.trials, self.values(), self.shares())
        }

    def export_state(self) -> dict[str, Any]:
        return {"names": list(self.names), **self._core.export_state()}

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`export_state` output. ValueError, changing nothing, if it is
        malformed or for other candidates."""
        if not isinstance(state, Mapping) or "names" not in state:
            raise ValueError("meta-bandit state must be a mapping with the candidates' names")
        if list(state["names"]) != list(self.names):
            raise ValueError(f"meta-bandit state is for candidates {state['names']}, not {list(self.names)}")
        self._core.import_state(state)
