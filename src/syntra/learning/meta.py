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
from collections.abc import Sequence
from typing import Any

import numpy as np

METHODS = ("exp3ix", "thompson")
ESTIMATORS = ("ips", "snips")
THOMPSON_DRAWS = 256


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
        if method not in METHODS:
            raise ValueError(f"meta.method must be one of {METHODS}, got {method!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"meta.estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if not (math.isfinite(weight_cap) and weight_cap >= 1.0):
            raise ValueError(f"meta.weight_cap must be a finite number >= 1, got {weight_cap!r}")
        if not (math.isfinite(exploration_floor) and 0.0 <= exploration_floor <= 0.5):
            raise ValueError(f"meta.exploration_floor must be in [0, 0.5], got {exploration_floor!r}")
        if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"meta.learning_rate must be a finite number > 0, got {learning_rate!r}")
        if initial is not None and initial not in names:
            raise ValueError(f"initial candidate {initial!r} is not one of {names!r}")
        self.names = names
        self.method = method
        self.estimator = estimator
        self.weight_cap = float(weight_cap)
        self.exploration_floor = float(exploration_floor)
        self.learning_rate = learning_rate
        self.seed = seed
        self.initial = initial
        self.prior_trials = int(prior_trials)
        count = len(names)
        self.trials = [0] * count          # decisions each candidate served
        self.weighted_gain = [0.0] * count  # sum of w_c * r
        self.weight_sum = [0.0] * count     # sum of w_c
        self.observations = 0
        self._shares = self._compute_shares()

    # --- serving ----------------------------------------------------------------------

    def shares(self) -> list[float]:
        """Each candidate's probability of serving the next decision."""
        return list(self._shares)

    def choose(self, u: float) -> int:
        """The candidate that serves, for a uniform draw ``u`` in [0, 1)."""
        cumulative = 0.0
        last = len(self._shares) - 1
        for index, share in enumerate(self._shares):
            cumulative += share
            if u < cumulative:
                return index
        return last

    def served(self, candidate: int) -> None:
        self.trials[candidate] += 1

    # --- learning ---------------------------------------------------------------------

    def observe(self, target_probabilities: Sequence[float], logging_probability: float, reward: float) -> None:
        """Account one feedback: each candidate's probability of the served option, the
        probability it was served with, and the reward scaled to [0, 1]."""
        if not (0.0 < logging_probability <= 1.0):
            raise ValueError(f"logging probability must be in (0, 1], got {logging_probability!r}")
        if not (0.0 <= reward <= 1.0):
            raise ValueError(f"meta-bandit rewards are scaled to [0, 1], got {reward!r}")
        ix = self._rate(self.observations + 1) / 2 if self.method == "exp3ix" else 0.0
        cap = self.weight_cap
        for index, target in enumerate(target_probabilities):
            weight = min(target / (logging_probability + ix), cap)
            self.weighted_gain[index] += weight * reward
            self.weight_sum[index] += weight
        self.observations += 1
        self._shares = self._compute_shares()

    def values(self) -> list[float | None]:
        """Each candidate's estimated value (reward scaled to [0, 1]); None before evidence."""
        out: list[float | None] = []
        for gain, weights in zip(self.weighted_gain, self.weight_sum):
            if self.estimator == "ips":
                out.append(gain / self.observations if self.observations else None)
            else:
                out.append(gain / weights if weights > 0 else None)
        return out

    def _rate(self, n: int) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return math.sqrt(8.0 * math.log(max(len(self.names), 2)) / max(n, 1))

    def _compute_shares(self) -> list[float]:
        count = len(self.names)
        n = self.observations
        head = [0.0] * count
        if self.initial is not None:
            head[self.names.index(self.initial)] = float(self.prior_trials)
        if self.method == "exp3ix":
            eta = self._rate(max(n, 1))
            values = self.values()
            gains = [eta * ((v or 0.0) * n + h) for v, h in zip(values, head)]
            top = max(gains)
            raw = [math.exp(g - top) for g in gains]
        else:
            raw = self._thompson_shares(head)
        total = sum(raw)
        floor = self.exploration_floor
        return [(1.0 - floor) * r / total + floor / count for r in raw]

    def _thompson_shares(self, head: list[float]) -> list[float]:
        count = len(self.names)
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
        return list(wins + 1.0 / count)  # never exactly 0 before the floor

    # --- state ------------------------------------------------------------------------

    def report(self) -> dict[str, dict[str, Any]]:
        """Per candidate: decisions served, estimated value and current share."""
        return {
            name: {"trials": trials, "value": value, "share": share}
            for name, trials, value, share in zip(self.names, self.trials, self.values(), self._shares)
        }

    def export_state(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "trials": list(self.trials),
            "weighted_gain": list(self.weighted_gain),
            "weight_sum": list(self.weight_sum),
            "observations": self.observations,
        }

    def import_state(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != list(self.names):
            raise ValueError(f"meta-bandit state is for candidates {state['names']}, not {list(self.names)}")
        count = len(self.names)
        trials = [int(t) for t in state["trials"]]
        gain = [float(g) for g in state["weighted_gain"]]
        weights = [float(w) for w in state["weight_sum"]]
        if not len(trials) == len(gain) == len(weights) == count:
            raise ValueError("meta-bandit state does not match its candidates")
        self.trials, self.weighted_gain, self.weight_sum = trials, gain, weights
        self.observations = int(state["observations"])
        self._shares = self._compute_shares()
