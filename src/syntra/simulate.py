"""Run a capsule against a synthetic Bernoulli world and measure how fast it learns.

Every round the capsule decides, the world pays 1 with the chosen option's true mean
(and 0 otherwise), and the capsule gets that reward as feedback. The world draws from its
own :class:`~syntra_core.rng.RandomStream`, keyed by the seed and a fixed sequence the
engine never uses for it, so a run is reproducible from its seed alone.

Two variations test the learning layer:

* ``context_features=d``: every round the world draws ``d`` features uniformly in [0, 1],
  and option ``i`` pays with probability ``sigmoid(logit(true_means[i]) + w_i . (x - 1/2))``,
  with weights ``w_i`` (scale 4) drawn once from the world's stream, so which option is best
  depends on the features. The capsule decides from them (``contextSpec`` of kind
  ``features``).
* ``drift_at=r``: from round ``r`` on, the true means are reversed (the best option
  becomes the worst).

Regret here is pseudo-regret: the sum over rounds of ``best mean - mean of the chosen
option``, both in that round's world. It measures the rule, not the luck of the world's
coin flips.

>>> result = simulate(["a", "b"], [0.1, 0.9], rounds=500, seed=7)
>>> sum(result.pulls.values())
500
>>> result.best_options
('b',)
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syntra_core.rng import RandomStream

from syntra.capsule_config import ALGORITHMS, _check_context, _check_options
from syntra.engine import Engine
from syntra.errors import InvalidConfig, InvalidContext, SyntraError

MAX_ROUNDS = 10**8
MAX_FEATURES = 64
CURVE_POINTS = 200
CAPSULE_NAME = "tenants/sim/jobs/simulate/capsules/bandit"
# "WORLD" in ASCII: the world's stream sequence, so it never coincides with the engine's.
WORLD_SEQUENCE = 0x574F524C44


class InvalidSimulation(SyntraError, ValueError):
    """The settings of a simulated run are invalid (options, true means, rounds, seed)."""


class PlottingUnavailable(SyntraError):
    """matplotlib, the optional ``syntra[plot]`` extra, is not installed."""


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What a simulated run did and what the capsule learned.

    ``regret_curve`` holds ``(round, cumulative regret)`` pairs at up to
    :data:`CURVE_POINTS` evenly spaced rounds, the last one being ``rounds``.
    """

    options: tuple[str, ...]
    true_means: tuple[float, ...]
    rounds: int
    seed: int
    algorithm: str
    context: str
    context_features: int
    drift_at: int | None
    pulls: dict[str, int]
    mean_reward: dict[str, float | None]
    cumulative_regret: float
    regret_curve: tuple[tuple[int, float], ...]
    # What the learning layer reports: lifecycle, candidates, drift events (learning runs).
    learning: dict[str, Any] | None = None

    @property
    def best_options(self) -> tuple[str, ...]:
        """The options with the highest true mean (several only on a tie)."""
        top = max(self.true_means)
        return tuple(o for o, m in zip(self.options, self.true_means) if m == top)

    @property
    def best_arm_share(self) -> float:
        """The share of rounds that played a best option."""
        return sum(self.pulls[o] for o in self.best_options) / self.rounds

    @property
    def uniform_regret(self) -> float:
        """The regret a uniformly random choice would expect without features: the
        baseline to beat (reversing the means at a drift does not change it)."""
        top = max(self.true_means)
        return self.rounds * sum(top - m for m in self.true_means) / len(self.true_means)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": list(self.options),
            "true_means": list(self.true_means),
            "rounds": self.rounds,
            "seed": self.seed,
            "algorithm": self.algorithm,
            "context": self.context,
            "context_features": self.context_features,
            "drift_at": self.drift_at,
            "cumulative_regret": self.cumulative_regret,
            "uniform_regret": self.uniform_regret,
            "best_options": list(self.best_options),
            "best_arm_share": self.best_arm_share,
            "pulls": dict(self.pulls),
            "mean_reward": dict(self.mean_reward),
            "regret_curve": [list(point) for point in self.regret_curve],
            "learning": self.learning,
        }


def simulate(
    options: Sequence[str],
    true_means: Sequence[float],
    rounds: int,
    seed: int = 0,
    *,
    algorithm: str = "thompson",
    context: str = "",
    context_features: int = 0,
    drift_at: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Play ``rounds`` rounds of a fresh capsule against Bernoulli options.

    ``true_means[i]`` is the probability that option ``i`` pays 1 (before features shift
    it; see the module docs for ``context_features`` and ``drift_at``). ``algorithm``
    ``"auto"``, features or a drift run the capsule with the learning layer (warmup, drift
    detection; see docs/learning.md); otherwise it runs exactly the named rule.
    ``progress``, if given, is called with 0 once the settings are valid and the run
    starts, then now and then with the number of rounds played since its previous call.
    Raises :class:`InvalidSimulation` for invalid settings, with the engine's own message
    for options and context (so whatever the engine would refuse is refused here first).
    """
    try:
        options = _check_options(options)
        _check_context(context)
    except (InvalidConfig, InvalidContext) as error:
        raise InvalidSimulation(str(error)) from None
    try:
        true_means = tuple(float(m) for m in true_means)
    except (TypeError, ValueError):
        raise InvalidSimulation(f"true rewards must be numbers, got {true_means!r}") from None
    _validate(options, true_means, rounds, seed, algorithm, context_features, drift_at)

    engine = Engine.memory(seed=seed)
    learning = None
    names = [f"f{i}" for i in range(context_features)]
    if algorithm == "auto" or context_features or drift_at is not None:
        learning = {"algorithm": algorithm}
        if context_features:
            learning["contextSpec"] = {"kind": "features", "features": {
                name: {"type": "continuous", "range": [0, 1]} for name in names}}
    try:
        capsule = engine.install(CAPSULE_NAME, options=options, algorithm=algorithm,
                                 reward={"type": "bernoulli"}, learning=learning)
    except InvalidConfig as error:
        raise InvalidSimulation(str(error)) from None
    world = RandomStream(seed, sequence=WORLD_SEQUENCE)
    weights = [[4.0 * (2.0 * world.random() - 1.0) for _ in names] for _ in options]
    run = _Run(capsule, context, names, world, true_means, weights, drift_at)

    curve = []
    played = 0
    if progress is not None:
        progress(0)
    for checkpoint in _checkpoints(rounds, CURVE_POINTS):
        run.play(played, checkpoint)
        if progress is not None:
            progress(checkpoint - played)
        played = checkpoint
        curve.append((played, math.fsum(run.gaps)))

    report = capsule.report()
    return SimulationResult(
        options=options,
        true_means=true_means,
        rounds=rounds,
        seed=seed,
        algorithm=algorithm,
        context=context,
        context_features=context_features,
        drift_at=drift_at,
        pulls=dict(zip(options, run.counts)),
        mean_reward={o: (r / n if n else None) for o, r, n in zip(options, run.rewards, run.counts)},
        cumulative_regret=curve[-1][1],
        regret_curve=tuple(curve),
        learning=None if learning is None else {
            key: report[key] for key in ("lifecycle", "candidates", "drift_events")},
    )


class _Run:
    """One simulated world and the capsule playing in it."""

    def __init__(self, capsule, context, names, world, true_means, weights, drift_at):
        self.capsule, self.context, self.names, self.world = capsule, context, names, world
        self.means, self.weights, self.drift_at = true_means, weights, drift_at
        self.logits = [math.log(max(m, 1e-9) / max(1.0 - m, 1e-9)) for m in true_means]
        self.counts = [0] * len(true_means)
        self.rewards = [0.0] * len(true_means)
        self.gaps: list[float] = []   # per checkpoint span, summed exactly at the end

    def _round_means(self, round_index: int, x: list[float]) -> tuple[float, ...]:
        means = self.means
        if self.drift_at is not None and round_index >= self.drift_at:
            means = means[::-1]
        if not x:
            return means
        out = []
        for mean, w in zip(means, self.weights):
            logit = math.log(max(mean, 1e-9) / max(1.0 - mean, 1e-9))
            logit += sum(wi * (xi - 0.5) for wi, xi in zip(w, x))
            out.append(1.0 / (1.0 + math.exp(-logit)))
        return tuple(out)

    def play(self, start: int, stop: int) -> None:
        # The hot loop: local names, and nothing per round that can wait for a checkpoint.
        decide, feedback, draw = self.capsule.decide, self.capsule.feedback, self.world.random
        names, context, counts, rewards = self.names, self.context, self.counts, self.rewards
        plain = not names and self.drift_at is None
        regret = 0.0
        for round_index in range(start, stop):
            if names:
                x = [draw() for _ in names]
                decision = decide(context, features=dict(zip(names, x)))
            else:
                x = []
                decision = decide(context)
            means = self.means if plain else self._round_means(round_index, x)
            arm = decision.option_index
            counts[arm] += 1
            regret += max(means) - means[arm]
            reward = 1.0 if draw() < means[arm] else 0.0
            rewards[arm] += reward
            feedback(decision.decision_id, reward)
        self.gaps.append(regret)


def _checkpoints(rounds: int, points: int) -> list[int]:
    """Up to ``points`` evenly spaced rounds in ``1..rounds``, ending at ``rounds``."""
    return sorted({rounds * i // points for i in range(1, points + 1)} - {0})


def _validate(options: tuple[str, ...], true_means: tuple[float, ...], rounds: int,
              seed: int, algorithm: str, context_features: int, drift_at: int | None) -> None:
    # Options and context were checked by the engine's own rules in simulate().
    if len(true_means) != len(options):
        raise InvalidSimulation(
            f"{len(options)} options need {len(options)} true rewards, got {len(true_means)}"
        )
    for option, mean in zip(options, true_means):
        if not 0.0 <= mean <= 1.0:  # also rejects NaN
            raise InvalidSimulation(
                f"true reward of {option!r} must be a probability in [0, 1], got {mean}"
            )
    if not _is_int(rounds) or not 1 <= rounds <= MAX_ROUNDS:
        raise InvalidSimulation(f"rounds must be an integer in 1..{MAX_ROUNDS:_}, got {rounds!r}")
    if not _is_int(seed) or not 0 <= seed < 2**64:
        raise InvalidSimulation(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if algorithm not in ALGORITHMS:
        raise InvalidSimulation(
            f"algorithm must be one of {', '.join(sorted(ALGORITHMS))}, got {algorithm!r}"
        )
    if not _is_int(context_features) or not 0 <= context_features <= MAX_FEATURES:
        raise InvalidSimulation(f"context features must be an integer in 0..{MAX_FEATURES}, got {context_features!r}")
    if drift_at is not None and (not _is_int(drift_at) or not 1 <= drift_at < rounds):
        raise InvalidSimulation(f"drift round must be an integer in 1..{rounds - 1} (within the run), got {drift_at!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_plot_path(path: str | Path) -> None:
    """Fail before a long run rather than after it: the plot must be writable as asked.

    Raises :class:`PlottingUnavailable` without matplotlib, and :class:`InvalidSimulation`
    for an unknown format, a missing directory, a directory in the file's place or a
    location this process cannot write to.
    """
    _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    target = Path(path)
    suffix = target.suffix.lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise InvalidSimulation(
            f"cannot write a .{suffix} plot; use one of: {', '.join(sorted(formats))}"
        )
    if not target.parent.is_dir():
        raise InvalidSimulation(f"directory {str(target.parent)!r} does not exist")
    if target.is_dir():
        raise InvalidSimulation(f"cannot write the plot to {str(target)!r}: it is a directory")
    if target.exists() and not os.access(target, os.W_OK):
        raise InvalidSimulation(f"cannot write the plot to {str(target)!r}: permission denied")
    # Permission bits do not tell the whole story (read-only mounts, ACLs, root): a real
    # file in the same directory does.
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".syntra-plot-check-"):
            pass
    except OSError as error:
        raise InvalidSimulation(
            f"cannot write the plot to {str(target)!r}: {error.strerror or error}"
        ) from None


def plot_regret(result: SimulationResult, path: str | Path) -> None:
    """Write the cumulative-regret curve of ``result`` to ``path``; PNG unless the suffix says."""
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)  # Agg, set on this figure only: no global backend switch
    axes = figure.add_subplot()
    rounds, regret = zip(*((0, 0.0),) + result.regret_curve)
    axes.plot(rounds, regret, label=result.algorithm)
    axes.set_xlabel("round")
    axes.set_ylabel("cumulative regret")
    axes.set_title(
        f"{result.algorithm} on {len(result.options)} options, seed {result.seed}: "
        f"regret {result.cumulative_regret:,.1f} (uniform random {result.uniform_regret:,.1f})"
    )
    axes.set_xlim(0, result.rounds)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    suffix = Path(path).suffix.lstrip(".").lower()
    figure.savefig(path, format=suffix or "png", dpi=120)


def _matplotlib():
    # Imported lazily: matplotlib is the optional syntra[plot] extra and slow to import.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable(
            "plotting needs matplotlib: pip install 'syntra[plot]'"
        ) from None
    return Figure, FigureCanvasAgg
