"""Hierarchical decisions: one choice per level, each level learning from the outcome.

A hierarchical action (``actions.kind: hierarchical``) is a path of choices: a model tier,
then a prompt style within it, say. The capsule's options are the leaf combinations
(``"large/terse"``), and the learner keeps their statistics as usual; but each level also
learns on its own, in a table keyed by the context and the choices above it, so a level
generalises across what is below it. Level ``l`` of ``L`` is credited with the reward in
full (``credit: full``) or discounted by its distance from the leaf (``credit:
discounted``): ``low + discount ** (L - 1 - l) * (reward - low)``, so the leaf choice gets
the whole reward and the levels above less of it.

Each level chooses with Beta-Thompson sampling (exact propensities, see
:mod:`syntra_core.bandits`); a leaf's propensity is the product of its levels'.

>>> from syntra.learning.config import LearningConfig
>>> shape = LearningConfig.parse({"actions": {"kind": "hierarchical", "levels": [
...     {"name": "tier", "options": ["small", "large"]},
...     {"name": "style", "options": ["terse", "verbose"]}]}}).actions
>>> tree = Hierarchy(shape, reward_low=0.0, reward_high=1.0, seed=7)
>>> leaf, propensity = tree.choose("support", sequence=0)
>>> shape.options()[leaf] in ("small/terse", "small/verbose", "large/terse", "large/verbose")
True
>>> tree.learn("support", leaf, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from syntra_core.bandits import ArmTable, BetaThompson

# Each level's stream: the capsule seed plus this times (level + 1), apart from the
# candidates' streams (see syntra.learning.policy).
_LEVEL_STRIDE = 0xD1B54A32D192ED03
_MASK64 = (1 << 64) - 1


class Hierarchy:
    """The level learners of one hierarchical capsule (see the module docs)."""

    def __init__(self, shape, *, reward_low: float, reward_high: float, seed: int):
        self.levels = shape.levels
        self.credit = shape.credit
        self.discount = shape.discount
        self.low = reward_low
        self.seed = seed
        self.tables = [ArmTable(len(level.options), reward_low, reward_high) for level in self.levels]
        self.rules = [BetaThompson(table) for table in self.tables]
        # Leaf index = mixed-radix number over the levels' choices, first level most significant.
        self.radix = [len(level.options) for level in self.levels]

    def _key(self, context_key: str, path: list[int]) -> str:
        return context_key + "|" + "/".join(map(str, path))

    def choose(self, context_key: str, sequence: int) -> tuple[int, float]:
        """(leaf index, its propensity) for decision ``sequence`` in ``context_key``."""
        path: list[int] = []
        propensity = 1.0
        for index, rule in enumerate(self.rules):
            seed = (self.seed + _LEVEL_STRIDE * (index + 1)) & _MASK64
            arm, p = rule.select(self._key(context_key, path), seed, sequence)
            path.append(arm)
            propensity *= p
        return self._leaf(path), propensity

    def _leaf(self, path: list[int]) -> int:
        leaf = 0
        for arm, size in zip(path, self.radix):
            leaf = leaf * size + arm
        return leaf

    def _path(self, leaf: int) -> list[int]:
        path = []
        for size in reversed(self.radix):
            path.append(leaf % size)
            leaf //= size
        return path[::-1]

    def learn(self, context_key: str, leaf: int, reward: float) -> None:
        """Credit each level of ``leaf``'s path with ``reward`` (checked by the caller)."""
        path = self._path(leaf)
        depth = len(path)
        for index, (table, arm) in enumerate(zip(self.tables, path)):
            credit = reward
            if self.credit == "discounted":
                credit = self.low + self.discount ** (depth - 1 - index) * (reward - self.low)
            table.update(self._key(context_key, path[:index]), arm, credit)

    def reset(self) -> None:
        for table in self.tables:
            table.reset_all()

    def report(self) -> dict[str, Any]:
        """Per level and per context-and-path: plays of each of the level's options."""
        out = {}
        for level, table in zip(self.levels, self.tables):
            out[level.name] = {
                key: dict(zip(level.options, map(int, table.pulls(key)))) for key in table.contexts
            }
        return out

    def export_state(self) -> dict[str, Any]:
        return {"tables": [t.export_state() for t in self.tables],
                "rules": [r.export_state() for r in self.rules]}

    def import_state(self, state: Mapping[str, Any]) -> None:
        if len(state["tables"]) != len(self.tables) or len(state["rules"]) != len(self.rules):
            raise ValueError("hierarchy state does not match its levels")
        for table, rule, table_state, rule_state in zip(self.tables, self.rules, state["tables"], state["rules"]):
            table.import_state(table_state)
            rule.import_state(rule_state)
