"""Run a capsule against a synthetic Bernoulli world and measure how fast it learns.

Every round the capsule decides, the world pays 1 with the chosen option's true mean
(and 0 otherwise), and the capsule gets that reward as feedback. The world draws from its
own :class:`~syntra_core.rng.RandomStream`, keyed by the seed and a fixed sequence the
engine never uses for it, so a run is reproducible from its seed alone.

Regret here is pseudo-regret: the sum over rounds of ``best mean - mean of the chosen
option``. It measures the rule, not the luck of the world's coin flips.

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

from syntra.capsule import ALGORITHMS, _check_context, _check_options
from syntra.engine import Engine
from syntra.errors import InvalidConfig, InvalidContext, SyntraError

MAX_ROUNDS = 10**8
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
    pulls: dict[str, int]
    mean_reward: dict[str, float | None]
    cumulative_regret: float
    regret_curve: tuple[tuple[int, float], ...]

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
        """The regret a uniformly random choice would expect: the baseline to beat."""
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
            "cumulative_regret": self.cumulative_regret,
            "uniform_regret": self.uniform_regret,
            "best_options": list(self.best_options),
            "best_arm_share": self.best_arm_share,
            "pulls": dict(self.pulls),
            "mean_reward": dict(self.mean_reward),
            "regret_curve": [list(point) for point in self.regret_curve],
        }


def simulate(
    options: Sequence[str],
    true_means: Sequence[float],
    rounds: int,
    seed: int = 0,
    *,
    algorithm: str = "thompson",
    context: str = "",
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Play ``rounds`` rounds of a fresh capsule against Bernoulli options.

    ``true_means[i]`` is the probability that option ``i`` pays 1. ``progress``, if given,
    is called with 0 once the settings are valid and the run starts, then now and then
    with the number of rounds played since its previous call.
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
    _validate(options, true_means, rounds, seed, algorithm)

    engine = Engine.memory(seed=seed)
    capsule = engine.install(CAPSULE_NAME, options=options, algorithm=algorithm,
                             reward={"type": "bernoulli"})
    world = RandomStream(seed, sequence=WORLD_SEQUENCE)
    top = max(true_means)
    gaps = [top - m for m in true_means]
    counts = [0] * len(options)

    curve = []
    played = 0
    if progress is not None:
        progress(0)
    for checkpoint in _checkpoints(rounds, CURVE_POINTS):
        _play(capsule, context, world, true_means, counts, checkpoint - played)
        if progress is not None:
            progress(checkpoint - played)
        played = checkpoint
        # From counts rather than a running sum, so no rounding error builds up.
        curve.append((played, math.fsum(n * gap for n, gap in zip(counts, gaps))))

    learned = capsule.report()["contexts"][context]
    return SimulationResult(
        options=options,
        true_means=true_means,
        rounds=rounds,
        seed=seed,
        algorithm=algorithm,
        context=context,
        pulls=dict(zip(options, counts)),
        mean_reward=dict(learned["mean_reward"]),
        cumulative_regret=curve[-1][1],
        regret_curve=tuple(curve),
    )


def _play(capsule, context: str, world: RandomStream, true_means: tuple[float, ...],
          counts: list[int], rounds: int) -> None:
    # The hot loop: local names, and nothing per round that can wait for a checkpoint.
    decide, feedback, draw = capsule.decide, capsule.feedback, world.random
    for _ in range(rounds):
        decision = decide(context)
        arm = decision.option_index
        counts[arm] += 1
        feedback(decision.decision_id, 1.0 if draw() < true_means[arm] else 0.0)


def _checkpoints(rounds: int, points: int) -> list[int]:
    """Up to ``points`` evenly spaced rounds in ``1..rounds``, ending at ``rounds``."""
    return sorted({rounds * i // points for i in range(1, points + 1)} - {0})


def _validate(options: tuple[str, ...], true_means: tuple[float, ...], rounds: int,
              seed: int, algorithm: str) -> None:
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
