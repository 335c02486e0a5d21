"""Built-in scenarios that show Syntra learning a different best option per context.

Each scenario is one capsule under ``tenants/demo/jobs/<job>/capsules/<name>`` whose
contexts have their own true reward rates, unknown to the capsule. Traffic visits the
contexts in turn; after it, the demo compares what each context learned with the truth.

A context's *learned best* is the option its capsule played most (a tie goes to the higher
mean reward): that is the option the capsule has come to prefer. The highest raw mean
would not do, since an option played once and lucky once has a mean of 1.

>>> result = run_demo(seed=7, rounds=300)
>>> [s.title for s in result.scenarios][0]
'LLM tier routing'
>>> 0 <= result.learned <= result.contexts
True
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syntra_core.rng import RandomStream

from syntra.engine import Engine
from syntra.simulate import InvalidSimulation

DEFAULT_ROUNDS = 3000
MAX_ROUNDS = 10**6
# "DEMO" in ASCII, plus the scenario's index: each world has a stream of its own.
WORLD_SEQUENCE = 0x44454D4F
# Continuous rewards are Beta(mean * k, (1 - mean) * k): in [0, 1] with exactly that mean.
CONTINUOUS_CONCENTRATION = 20.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A capsule and its world: ``true_means[context][i]`` is option ``i``'s mean reward."""

    title: str
    job: str
    capsule: str
    options: tuple[str, ...]
    reward: str  # "bernoulli" or "continuous" (in [0, 1])
    true_means: dict[str, tuple[float, ...]]
    meaning: str  # what a reward of 1 stands for
    # Microcents each option costs, held on a budget account per decision; None: no budget.
    costs: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return f"tenants/demo/jobs/{self.job}/capsules/{self.capsule}"


def _autoscale_means(instances_needed: float) -> tuple[float, ...]:
    """Mean reward of 2, 4, 8 and 16 instances: load served, minus what the fleet costs."""
    means = []
    for instances in (2, 4, 8, 16):
        served = min(1.0, instances / instances_needed)
        cost = instances / 16
        means.append(round(0.1 + 0.8 * served - 0.3 * cost, 4))
    return tuple(means)


SCENARIOS = (
    Scenario(
        title="LLM tier routing",
        job="llm",
        capsule="tier-router",
        options=("cheap_fast", "balanced", "expensive_accurate"),
        reward="bernoulli",
        # FAQ users leave if the answer is slow; legal answers must be right.
        true_means={
            "faq": (0.82, 0.76, 0.68),
            "code": (0.45, 0.72, 0.62),
            "legal": (0.30, 0.55, 0.80),
        },
        meaning="answer accepted",
        costs=(300, 2_000, 9_000),
    ),
    Scenario(
        title="Retry policy",
        job="http",
        capsule="retry-policy",
        options=("no_retry", "fixed_3x", "exponential_backoff"),
        reward="bernoulli",
        # Search blips clear fast; payments throttle, so backing off wins; inventory calls
        # are slow, so any retry blows the SLO.
        true_means={
            "search": (0.80, 0.93, 0.87),
            "payments": (0.70, 0.64, 0.86),
            "inventory": (0.90, 0.78, 0.83),
        },
        meaning="request succeeded within SLO",
    ),
    Scenario(
        title="Autoscale",
        job="fleet",
        capsule="autoscale",
        options=("2", "4", "8", "16"),
        reward="continuous",
        true_means={
            "night": _autoscale_means(3),
            "day": _autoscale_means(7),
            "peak": _autoscale_means(14),
        },
        meaning="load served, minus instance cost",
    ),
    Scenario(
        title="Fraud threshold band",
        job="payments",
        capsule="fraud-threshold",
        options=("strict", "balanced", "lenient"),
        reward="bernoulli",
        # Digital goods draw fraud; grocery shoppers abandon at friction.
        true_means={
            "digital_goods": (0.78, 0.69, 0.55),
            "travel": (0.71, 0.82, 0.74),
            "grocery": (0.80, 0.87, 0.93),
        },
        meaning="good outcome: legitimate approved or fraud blocked",
    ),
)


@dataclass(frozen=True, slots=True)
class ContextOutcome:
    """What one context learned, next to the truth.

    ``learned_best`` is the most-played option (ties to the higher mean), None before any play.
    """

    context: str
    learned_best: str | None
    true_best: str
    true_best_share: float
    mean_reward: float
    pulls: dict[str, int]
    true_means: dict[str, float]

    @property
    def learned(self) -> bool:
        return self.learned_best == self.true_best


@dataclass(frozen=True, slots=True)
class ScenarioOutcome:
    title: str
    name: str
    reward: str
    meaning: str
    options: tuple[str, ...]
    contexts: tuple[ContextOutcome, ...]
    spend: dict[str, int] | None = None  # microcents committed per option, when budgeted


@dataclass(frozen=True, slots=True)
class DemoResult:
    seed: int
    rounds: int  # per context
    scenarios: tuple[ScenarioOutcome, ...]

    @property
    def contexts(self) -> int:
        return sum(len(s.contexts) for s in self.scenarios)

    @property
    def learned(self) -> int:
        """How many contexts learned their true best option."""
        return sum(c.learned for s in self.scenarios for c in s.contexts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rounds_per_context": self.rounds,
            "contexts": self.contexts,
            "learned_true_best": self.learned,
            "scenarios": [
                {
                    "title": s.title,
                    "name": s.name,
                    "reward": s.reward,
                    "meaning": s.meaning,
                    "options": list(s.options),
                    "spend_microcents": s.spend,
                    "contexts": [
                        {
                            "context": c.context,
                            "learned_best": c.learned_best,
                            "true_best": c.true_best,
                            "learned": c.learned,
                            "true_best_share": c.true_best_share,
                            "mean_reward": c.mean_reward,
                            "pulls": dict(c.pulls),
                            "true_means": dict(c.true_means),
                        }
                        for c in s.contexts
                    ],
                }
                for s in self.scenarios
            ],
        }


def run_demo(seed: int = 0, rounds: int = DEFAULT_ROUNDS, data: str | Path | None = None) -> DemoResult:
    """Drive ``rounds`` decisions per context through every scenario; same seed, same result.

    With ``data``, the engine is durable and lives in that directory, which the demo owns:
    it is recreated on every run, and left behind for ``syntra verify`` and
    ``syntra logs export``. Without it, everything stays in memory. Each scenario's traffic
    comes from its own thread, so a durable run exercises group commit, while every
    capsule still sees its calls in a fixed order.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
        raise InvalidSimulation(f"rounds must be an integer in 1..{MAX_ROUNDS:_}, got {rounds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise InvalidSimulation(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if data is None:
        engine = Engine.memory(seed=seed)
    else:
        shutil.rmtree(data, ignore_errors=True)
        engine = Engine.open(data, seed=seed)
    try:
        outcomes: list[ScenarioOutcome | None] = [None] * len(SCENARIOS)
        failures: list[BaseException] = []

        def drive(index: int) -> None:
            try:
                world = RandomStream(seed, sequence=WORLD_SEQUENCE + index)
                outcomes[index] = _run_scenario(engine, SCENARIOS[index], world, rounds)
            except BaseException as exc:  # re-raised in the caller's thread below
                failures.append(exc)

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(SCENARIOS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
    finally:
        engine.close()
    return DemoResult(seed=seed, rounds=rounds, scenarios=tuple(outcomes))


def _run_scenario(engine: Engine, scenario: Scenario, world: RandomStream,
                  rounds: int) -> ScenarioOutcome:
    reward_spec = {"type": "bernoulli"}
    if scenario.reward == "continuous":
        reward_spec = {"type": "continuous", "range": [0.0, 1.0]}
    budget = None
    if scenario.costs is not None:
        # Funded for every decision at the dearest price, so it shows spend, not scarcity.
        account = f"{scenario.job}-spend"
        engine.budget.open_account(account, max(scenario.costs) * rounds * len(scenario.true_means))
        budget = {"account": account, "costs": dict(zip(scenario.options, scenario.costs))}
    capsule = engine.install(scenario.name, options=scenario.options, reward=reward_spec, budget=budget)
    draw = _continuous_reward if scenario.reward == "continuous" else _bernoulli_reward
    # Contexts take turns, as mixed live traffic would.
    for _ in range(rounds):
        for context, means in scenario.true_means.items():
            decision = capsule.decide(context)
            capsule.feedback(decision.decision_id, draw(world, means[decision.option_index]),
                             cost=decision.cost if budget else None)

    report = capsule.report()
    learned = report["contexts"]
    return ScenarioOutcome(
        title=scenario.title,
        name=scenario.name,
        reward=scenario.reward,
        meaning=scenario.meaning,
        options=scenario.options,
        contexts=tuple(
            _outcome(context, scenario.options, means, learned[context])
            for context, means in scenario.true_means.items()
        ),
        spend=report["budget"]["spend"] if budget else None,
    )


def _outcome(context: str, options: tuple[str, ...], means: tuple[float, ...],
             learned: dict[str, Any]) -> ContextOutcome:
    pulls = learned["pulls"]
    total = sum(pulls.values())
    true_best = options[max(range(len(options)), key=means.__getitem__)]
    earned = sum(pulls[o] * m for o, m in learned["mean_reward"].items() if m is not None)
    return ContextOutcome(
        context=context,
        learned_best=learned["best_option"],  # the most played option, per Capsule.report
        true_best=true_best,
        true_best_share=pulls[true_best] / total,
        mean_reward=earned / total,
        pulls=dict(pulls),
        true_means=dict(zip(options, means)),
    )


def _bernoulli_reward(world: RandomStream, mean: float) -> float:
    return 1.0 if world.random() < mean else 0.0


def _continuous_reward(world: RandomStream, mean: float) -> float:
    k = CONTINUOUS_CONCENTRATION
    return world.beta(mean * k, (1.0 - mean) * k)
