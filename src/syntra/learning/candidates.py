"""Candidate rules behind one interface, whatever statistics they read.

A scalar rule (:mod:`syntra_core.bandits`) reads the capsule's shared
:class:`~syntra_core.bandits.ArmTable`, which the learner updates on every feedback; a
linear rule (:mod:`syntra_core.linear`) keeps its own model over the encoded features and
learns from the feedback the policy hands it. :class:`Candidate` hides the difference from
the policy and the meta-bandit: each gives, for one decision, the probability of every
option, learns from a reward, predicts one, and exports its state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from syntra_core import bandits, linear

from syntra.errors import InvalidConfig

SCALAR_RULES = {
    "thompson": bandits.BetaThompson,
    "gaussian_thompson": bandits.GaussianThompson,
    "ucb1": bandits.UCB1,
    "epsilon_greedy": bandits.EpsilonGreedy,
    "softmax": bandits.Softmax,
    "greedy": bandits.Greedy,
}
LINEAR_RULES = ("linucb", "lints")
# The learning layer's defaults for its posterior samplers, over the rules' own (which a
# capsule without learning config keeps, so its old logs replay as they were written):
# 512 draws shrink the exploration floor to 1/513 of the plays, and probabilities
# refreshed after 1/64 more evidence follow it sooner. On the 5-arm Bernoulli benchmark
# (40 seeds) regret falls from 43.0 +- 2.9 to 34.3 +- 1.5; a refresh costs ~512 x options
# posterior draws, amortised over the decisions between refreshes.
TUNED = {
    "thompson": {"samples": 512, "max_staleness": 1 / 64},
    "gaussian_thompson": {"samples": 512, "max_staleness": 1 / 64},
}
ALL_RULES = tuple(SCALAR_RULES) + LINEAR_RULES


class Candidate:
    """One candidate rule: ``name``, and the per-decision calls the policy makes."""

    linear = False

    def __init__(self, name: str):
        self.name = name

    def distribution_into(self, context_key: str, x, seed: int, sequence: int, out) -> None:
        raise NotImplementedError

    def learn(self, arm: int, x, scaled_reward: float) -> None:
        """Learn from a reward the table has not seen (linear models only), scaled to [0, 1]
        over the capsule's reward range."""

    def predict(self, table, context_key: str, x, arm: int) -> float:
        """The reward this rule expects of ``arm``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what was learned (after drift); the shared table is reset by the policy."""

    def export_state(self) -> dict[str, Any]:
        return {}

    def import_state(self, state: Mapping[str, Any]) -> None:
        pass


class ScalarCandidate(Candidate):
    """A rule over the shared table (per-context counts and sums)."""

    def __init__(self, name: str, table, settings: Mapping[str, Any]):
        super().__init__(name)
        try:
            self.rule = SCALAR_RULES[name](table, **settings)
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"learning.json: settings for {name}: {exc}") from None

    def distribution_into(self, context_key, x, seed, sequence, out):
        self.rule.distribution_into(context_key, seed, sequence, out)

    def predict(self, table, context_key, x, arm):
        return table_mean(table, context_key, arm)

    def export_state(self):
        return self.rule.export_state()

    def import_state(self, state):
        self.rule.import_state(state)


def table_mean(table, context_key: str, arm: int) -> float:
    """The mean reward of ``arm`` in ``context_key``; the range's midpoint before any."""
    if context_key in table:
        pulls = table.pulls(context_key)[arm]
        if pulls:
            return float(table.reward_sums(context_key)[arm] / pulls)
    return (table.reward_low + table.reward_high) / 2


class LinearCandidate(Candidate):
    """LinUCB or LinTS over the encoded features (disjoint, or shared with option features).

    The model learns rewards scaled to [0, 1] over the capsule's reward range, so ``alpha``
    and ``v`` (widths in reward units of the model) mean the same whatever the range, and
    a reward anywhere in the range stays far inside the model's limits. Its predictions
    are mapped back to reward units.
    """

    linear = True

    def __init__(self, name: str, n_arms: int, dim: int, config: Mapping[str, Any],
                 option_features: np.ndarray | None):
        super().__init__(name)
        try:
            self.model = linear.LinearModel(
                dim, n_arms, ridge=config["regularization"],
                reinvert_every=config["reinvert_every"], embeddings=option_features)
            if name == "linucb":
                self.rule = linear.LinUCB(self.model, alpha=config["alpha"])
            else:
                self.rule = linear.LinTS(self.model, v=config["v"], samples=config["samples"])
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"learning.json: linear settings for {name}: {exc}") from None
        self._means = np.empty(n_arms)

    def distribution_into(self, context_key, x, seed, sequence, out):
        self.rule.distribution_into(x, seed, sequence, out)

    def learn(self, arm, x, scaled_reward):
        self.model.update(arm, x, scaled_reward)

    def predict(self, table, context_key, x, arm):
        low, high = table.reward_low, table.reward_high
        return low + (high - low) * float(self.rule.predict(x)[arm])

    def reset(self):
        self.model.reset()

    def export_state(self):
        return self.model.export_state()

    def import_state(self, state):
        self.model.import_state(state)


def build(name: str, *, table, n_arms: int, dim: int | None, settings: Mapping[str, Any],
          linear_config: Mapping[str, Any], option_features: np.ndarray | None,
          tuned: bool = True) -> Candidate:
    """The candidate ``name``, built from its settings (over :data:`TUNED` if ``tuned``)."""
    if name in SCALAR_RULES:
        return ScalarCandidate(name, table, {**TUNED.get(name, {}), **settings} if tuned else settings)
    if name not in LINEAR_RULES:
        raise InvalidConfig(f"learning.json: unknown algorithm {name!r}; known: {sorted(ALL_RULES)}")
    if dim is None:
        raise InvalidConfig(f"learning.json: {name} needs contextSpec of kind 'features'")
    return LinearCandidate(name, n_arms, dim, linear_config, option_features)
