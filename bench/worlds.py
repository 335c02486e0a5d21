"""Simulated bandit worlds, regret accounting and the contenders of the regret benchmarks.

Three worlds, each fully determined by a seed:

* ``bernoulli``: 5 arms with means 0.1 .. 0.5, 2,200 rounds;
* ``linear``: a logistic contextual world. Each round brings a context ``x`` of 9 features
  drawn uniform on [0, 1] plus a constant 1 (the bias), and arm ``a`` pays 1 with probability
  ``sigmoid(theta_a . x)``. ``theta`` is drawn once from a fixed seed and scaled so that every
  arm is the best one for a fair share of contexts; 3,000 rounds;
* ``drift``: the Bernoulli world over 4,000 rounds whose arm means are reversed at round 2,000.

A world is two tables drawn up front: ``expected[t, a]``, arm ``a``'s expected reward in round
``t``, and ``uniforms[t, a]``; the reward of playing ``a`` in round ``t`` is
``uniforms[t, a] < expected[t, a]``. Every contender of a seed therefore meets the same
contexts and the same potential rewards (common random numbers), so their differences are
their own.

Regret is the pseudo-regret of Bubeck & Cesa-Bianchi, "Regret Analysis of Stochastic and
Nonstochastic Multi-armed Bandit Problems" (2012), section 1: the sum over rounds of
``max_a expected[t, a] - expected[t, played]``, from the true means and not from the realised
rewards, so it is low-variance. In the contextual world the maximum is taken per context
(Lattimore & Szepesvari, "Bandit Algorithms" (2020), ch. 18), and in the drifting world per
round, against the arm that is best at that moment: the dynamic regret of Garivier & Moulines,
"On Upper-Confidence Bound Policies for Switching Bandit Problems" (2011). A policy choosing
uniformly at random has expected regret ``sum_t (max_a expected[t, a] - mean_a expected[t, a])``.

The contenders are Syntra (through its public ``Engine``/``Capsule`` API), River,
Vowpal Wabbit and MABWiser, each with its default settings; where a peer has no default
(River's ``epsilon`` and ``delta``) the values of its own examples, 0.1 and 1 (UCB1). VW
learns cost -reward; MABWiser, which cannot predict before a first fit, plays each arm once
first. Each contender's "best default" is its lowest-regret policy. A contender the installed
software cannot run (a peer that is not installed, a Syntra algorithm or learning option the
engine refuses) raises :class:`Unavailable` with the reason, and is reported as skipped.

Run ``python -m bench.worlds --world bernoulli --seeds 10`` for the regret table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

BERNOULLI_MEANS = (0.1, 0.2, 0.3, 0.4, 0.5)
BERNOULLI_ROUNDS = 2_200
LINEAR_ARMS = 5
LINEAR_FEATURES = 9  # drawn uniform on [0, 1]; the context adds a constant 1 after them
LINEAR_ROUNDS = 3_000
LINEAR_THETA_SEED = 2
# Feature weights ~ N(0, 1.5^2): every arm is best for 15-23% of contexts, and the best arm
# beats the second by 0.16 on average, so a per-arm linear model learns it in a few thousand rounds.
LINEAR_THETA_SCALE = 1.5
# The bias puts every arm's logit at -0.5 in the middle of the cube (a mean reward near 0.4).
LINEAR_CENTRE_LOGIT = -0.5
DRIFT_ROUNDS = 4_000
DRIFT_AT = 2_000

WORLDS = ("bernoulli", "linear", "drift")
# Regret varies a lot from seed to seed (a standard deviation of ~14 on the Bernoulli
# world's ~36): these counts resolve differences of a few percent between the leaders.
FULL_SEEDS = {"bernoulli": 100, "linear": 60, "drift": 20}
FAMILIES = ("syntra", "river", "vw", "mabwiser")
PEER_FAMILIES = FAMILIES[1:]
# The product default, against which every row is compared.
REFERENCE = ("syntra", "auto")
CAPSULE_NAME = "tenants/bench/jobs/regret/capsules/c"


# ---------------------------------------------------------------------------------------
# Worlds and regret accounting


@dataclass(frozen=True, eq=False)
class World:
    """One seeded run of a world: what each round offers, and what each arm would pay."""

    name: str
    expected: np.ndarray  # (rounds, arms): expected reward of each arm in each round
    uniforms: np.ndarray  # (rounds, arms): arm a pays 1 in round t iff uniforms[t, a] < expected[t, a]
    contexts: np.ndarray | None = None  # (rounds, features) for a contextual world; last column 1 (bias)

    @property
    def rounds(self) -> int:
        return self.expected.shape[0]

    @property
    def arm_count(self) -> int:
        return self.expected.shape[1]

    @property
    def contextual(self) -> bool:
        return self.contexts is not None

    def context(self, t: int) -> np.ndarray | None:
        return None if self.contexts is None else self.contexts[t]

    def reward(self, t: int, arm: int) -> float:
        """The reward of playing ``arm`` in round ``t`` (the same whoever plays it)."""
        return 1.0 if self.uniforms[t, arm] < self.expected[t, arm] else 0.0

    def regret_of(self, arms: np.ndarray) -> float:
        """Pseudo-regret of playing ``arms[t]`` in round ``t`` for every round."""
        arms = np.asarray(arms, dtype=np.intp)
        if arms.shape != (self.rounds,):
            raise ValueError(f"arms must hold one arm per round ({self.rounds}), got shape {arms.shape}")
        played = self.expected[np.arange(self.rounds), arms]
        return float(np.sum(self.expected.max(axis=1) - played))

    def uniform_regret(self) -> float:
        """The expected regret of choosing an arm uniformly at random every round."""
        return float(np.sum(self.expected.max(axis=1) - self.expected.mean(axis=1)))


def _streams(seed: int, count: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def bernoulli_world(seed: int, rounds: int = BERNOULLI_ROUNDS,
                    means: Sequence[float] = BERNOULLI_MEANS) -> World:
    """Stationary Bernoulli arms with the given means."""
    (rewards,) = _streams(seed, 1)
    expected = np.tile(np.asarray(means, dtype=np.float64), (rounds, 1))
    return World("bernoulli", expected, rewards.random(expected.shape))


def drift_world(seed: int, rounds: int = DRIFT_ROUNDS, drift_at: int = DRIFT_AT,
                means: Sequence[float] = BERNOULLI_MEANS) -> World:
    """Bernoulli arms whose means are reversed from round ``drift_at`` on (abrupt drift)."""
    if not 0 <= drift_at <= rounds:
        raise ValueError(f"drift_at must be in [0, {rounds}], got {drift_at}")
    (rewards,) = _streams(seed, 1)
    means = np.asarray(means, dtype=np.float64)
    expected = np.tile(means, (rounds, 1))
    expected[drift_at:] = means[::-1]
    return World("drift", expected, rewards.random(expected.shape))


def linear_theta() -> np.ndarray:
    """The linear world's true weights, (arms, features + 1), the bias last; fixed forever."""
    weights = np.random.default_rng(LINEAR_THETA_SEED).normal(0.0, LINEAR_THETA_SCALE,
                                                              (LINEAR_ARMS, LINEAR_FEATURES))
    bias = LINEAR_CENTRE_LOGIT - 0.5 * weights.sum(axis=1)
    return np.hstack([weights, bias[:, None]])


def linear_world(seed: int, rounds: int = LINEAR_ROUNDS) -> World:
    """Logistic contextual arms: P(reward = 1 | x, a) = sigmoid(theta_a . x)."""
    contexts_stream, rewards = _streams(seed, 2)
    contexts = np.hstack([contexts_stream.random((rounds, LINEAR_FEATURES)), np.ones((rounds, 1))])
    logits = contexts @ linear_theta().T
    expected = 1.0 / (1.0 + np.exp(-logits))
    return World("linear", expected, rewards.random(expected.shape), contexts)


def make_world(kind: str, seed: int) -> World:
    if kind == "bernoulli":
        return bernoulli_world(seed)
    if kind == "linear":
        return linear_world(seed)
    if kind == "drift":
        return drift_world(seed)
    raise ValueError(f"world must be one of {WORLDS}, got {kind!r}")


@dataclass(frozen=True)
class RunResult:
    regret: float  # pseudo-regret
    reward: float  # realised reward
    arms: np.ndarray  # the arm played in each round
    pulls: np.ndarray  # how often each arm was played
    seconds: float


def play(world: World, policy) -> RunResult:
    """Run ``policy`` (``choose(context) -> arm`` and ``learn(arm, context, reward)``) for
    every round of ``world``, feeding it the reward of the arm it chose."""
    arms = np.empty(world.rounds, dtype=np.intp)
    total = 0.0
    started = time.perf_counter()
    try:
        for t in range(world.rounds):
            context = world.context(t)
            arm = policy.choose(context)
            if not 0 <= arm < world.arm_count:
                raise ValueError(f"{policy!r} chose arm {arm!r}, outside [0, {world.arm_count})")
            reward = world.reward(t, arm)
            policy.learn(arm, context, reward)
            arms[t] = arm
            total += reward
    finally:
        close = getattr(policy, "close", None)
        if close is not None:
            close()
    seconds = time.perf_counter() - started
    return RunResult(world.regret_of(arms), total, arms, np.bincount(arms, minlength=world.arm_count), seconds)


class UniformPolicy:
    """Chooses an arm uniformly at random every round, and learns nothing."""

    def __init__(self, arm_count: int, seed: int):
        self._arm_count = arm_count
        self._rng = np.random.default_rng(seed)

    def choose(self, context) -> int:
        return int(self._rng.integers(self._arm_count))

    def learn(self, arm, context, reward) -> None:
        pass


# ---------------------------------------------------------------------------------------
# Contenders


class Unavailable(Exception):
    """The installed software cannot run this contender; the message says why."""


def _feature_names(count: int) -> list[str]:
    return [f"f{i}" for i in range(count)]


def features_learning(feature_count: int) -> dict:
    """The ``learning`` spec that declares the linear world's context as features."""
    return {"contextSpec": {"kind": "features", "features": {
        name: {"type": "continuous", "range": [0, 1]} for name in _feature_names(feature_count)}}}


class SyntraPolicy:
    """A Syntra capsule, driven through ``Engine.install`` / ``decide`` / ``feedback``.

    With ``feature_count`` it decides on the first ``feature_count`` columns of the context,
    passed as features ``f0``, ``f1``, ...; the world's constant bias column (the last) is
    left out, because a features ``contextSpec`` adds its own bias column by default."""

    def __init__(self, arm_count: int, seed: int, algorithm: str, learning: dict | None = None,
                 settings: dict | None = None, feature_count: int | None = None):
        from syntra import Engine, InvalidConfig, InvalidContext

        self._refusals = (InvalidConfig, InvalidContext, TypeError)
        self._engine = Engine.memory(seed=seed)
        extra = {} if learning is None else {"learning": learning}
        try:
            self._capsule = self._engine.install(
                CAPSULE_NAME, options=[f"arm{k}" for k in range(arm_count)],
                reward={"type": "bernoulli"}, algorithm=algorithm, settings=settings, **extra)
        except self._refusals as exc:
            self._engine.close()
            asked = f"algorithm={algorithm!r}"
            if learning is not None:
                asked += f" with learning {', '.join(sorted(learning)) or 'defaults'}"
            raise Unavailable(f"engine refused {asked}: {exc}") from None
        self._names = None if feature_count is None else _feature_names(feature_count)
        self._decision_id = None
        self._first = True

    def _decide(self, context):
        if self._names is None:
            return self._capsule.decide(context_key="")
        return self._capsule.decide(features=dict(zip(self._names, map(float, context))))  # all but the bias

    def choose(self, context) -> int:
        if self._first:
            # Only the first decision may reveal that this engine lacks a feature asked for.
            try:
                decision = self._decide(context)
            except self._refusals as exc:
                raise Unavailable(f"engine refused the first decision: {exc}") from None
            self._first = False
        else:
            decision = self._decide(context)
        self._decision_id = decision.decision_id
        return decision.option_index

    def learn(self, arm, context, reward) -> None:
        self._capsule.feedback(self._decision_id, reward=float(reward))

    def close(self) -> None:
        self._engine.close()


class RiverPolicy:
    """A ``river.bandit`` policy; contextual ones get the context as a dict of features."""

    def __init__(self, arm_count: int, policy, contextual: bool = False):
        self._arms = list(range(arm_count))
        self._policy = policy
        self._contextual = contextual
        self._names = _feature_names(0)

    def _features(self, context) -> dict:
        if len(self._names) != len(context):
            self._names = _feature_names(len(context))
        return dict(zip(self._names, map(float, context)))

    def choose(self, context) -> int:
        if self._contextual:
            return self._policy.pull(self._arms, context=self._features(context))
        return self._policy.pull(self._arms)

    def learn(self, arm, context, reward) -> None:
        if self._contextual:
            self._policy.update(arm, self._features(context), reward)
        else:
            self._policy.update(arm, reward)


class VowpalWabbitPolicy:
    """VW's ``--cb_explore_adf``: one shared line (the context, or a constant) and one line
    per action naming it; the action is sampled from VW's pmf. VW minimises cost, so the
    cost of a reward r is -r."""

    def __init__(self, arm_count: int, seed: int, arguments: str, contextual: bool):
        try:
            from vowpalwabbit import Workspace
        except ImportError:
            raise Unavailable("vowpalwabbit is not installed") from None
        self._workspace = Workspace(f"--cb_explore_adf --quiet --random_seed {seed} {arguments}")
        self._rng = np.random.default_rng(seed)
        self._actions = [f"|A a={k}" for k in range(arm_count)]
        self._contextual = contextual
        self._probability = 1.0

    def _shared(self, context) -> str:
        if not self._contextual:
            return "shared |S constant"
        return "shared |S " + " ".join(f"f{i}:{float(v)!r}" for i, v in enumerate(context))

    def choose(self, context) -> int:
        pmf = np.asarray(self._workspace.predict([self._shared(context), *self._actions]), dtype=np.float64)
        cumulative = np.cumsum(pmf)
        arm = min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")),
                  len(pmf) - 1)
        self._probability = float(pmf[arm])
        return arm

    def learn(self, arm, context, reward) -> None:
        lines = [self._shared(context), *self._actions]
        lines[1 + arm] = f"0:{-reward!r}:{self._probability!r} {self._actions[arm]}"
        self._workspace.learn(lines)

    def close(self) -> None:
        self._workspace.finish()


class MabwiserPolicy:
    """A MABWiser ``MAB``. It cannot predict before its first ``fit``, so it plays each arm
    once first (the usual UCB1 initialisation, counted in its regret), fits on those rounds,
    then predicts and ``partial_fit``s one round at a time."""

    def __init__(self, arm_count: int, seed: int, learning_policy, contextual: bool):
        from mabwiser.mab import MAB

        self._mab = MAB(list(range(arm_count)), learning_policy, seed=seed)
        self._arm_count = arm_count
        self._contextual = contextual
        self._warm_up: list[tuple[int, object, float]] = []
        self._fitted = False

    def choose(self, context) -> int:
        if not self._fitted:
            return len(self._warm_up)
        if self._contextual:
            return int(self._mab.predict(np.asarray(context, dtype=np.float64)[None, :]))
        return int(self._mab.predict())

    def learn(self, arm, context, reward) -> None:
        if self._fitted:
            contexts = np.asarray(context, dtype=np.float64)[None, :] if self._contextual else None
            self._mab.partial_fit([arm], [reward], contexts)
            return
        self._warm_up.append((arm, context, reward))
        if len(self._warm_up) == self._arm_count:
            arms, contexts, rewards = zip(*self._warm_up)
            self._mab.fit(list(arms), list(rewards), np.asarray(contexts) if self._contextual else None)
            self._fitted = True


@dataclass(frozen=True)
class Contender:
    family: str
    policy: str
    make: Callable[[World, int], object]  # (world, seed) -> policy; may raise Unavailable


def _syntra(label: str, algorithm: str, learning: dict | None = None, features: bool = False) -> Contender:
    # auto is the learning layer's meta-bandit: it needs a learning config, if only the defaults.
    if algorithm == "auto" and learning is None:
        learning = {}

    def make(world: World, seed: int):
        spec, feature_count = learning, None
        if features:
            feature_count = world.contexts.shape[1] - 1  # all but the bias column
            spec = {**features_learning(feature_count), **(learning or {})}
        return SyntraPolicy(world.arm_count, seed, algorithm, spec, feature_count=feature_count)

    return Contender("syntra", label, make)


def _river(label: str, build: Callable[[object, int], object], contextual: bool = False) -> Contender:
    def make(world: World, seed: int):
        try:
            from river import bandit, proba
        except ImportError:
            raise Unavailable("river is not installed") from None
        return RiverPolicy(world.arm_count, build((bandit, proba), seed), contextual)

    return Contender("river", label, make)


def _vw(label: str, arguments: str, contextual: bool = False) -> Contender:
    def make(world: World, seed: int):
        return VowpalWabbitPolicy(world.arm_count, seed, arguments, contextual)

    return Contender("vw", label, make)


def _mabwiser(label: str, build: Callable[[object], object], contextual: bool = False) -> Contender:
    def make(world: World, seed: int):
        try:
            from mabwiser.mab import LearningPolicy
        except ImportError:
            raise Unavailable("mabwiser is not installed") from None
        return MabwiserPolicy(world.arm_count, seed, build(LearningPolicy), contextual)

    return Contender("mabwiser", label, make)


DRIFT_ON = {"drift": {"enabled": True}}
DRIFT_OFF = {"drift": {"enabled": False}}
SYNTRA_BERNOULLI_RULES = ("thompson", "ucb1", "gaussian_thompson", "epsilon_greedy", "softmax", "greedy")


def _peer_bernoulli() -> list[Contender]:
    return [
        _river("EpsilonGreedy(0.1)", lambda m, s: m[0].EpsilonGreedy(epsilon=0.1, seed=s)),
        _river("UCB(delta=1)", lambda m, s: m[0].UCB(delta=1.0, seed=s)),
        _river("ThompsonSampling(Beta)", lambda m, s: m[0].ThompsonSampling(reward_obj=m[1].Beta(), seed=s)),
        _vw("epsilon 0.05", ""),
        _vw("squarecb", "--squarecb"),
        _mabwiser("ThompsonSampling", lambda lp: lp.ThompsonSampling()),
        _mabwiser("UCB1(alpha=1)", lambda lp: lp.UCB1(alpha=1)),
        _mabwiser("EpsilonGreedy(0.1)", lambda lp: lp.EpsilonGreedy(epsilon=0.1)),
    ]


def contenders(kind: str) -> list[Contender]:
    """Every contender of world ``kind``, Syntra's first."""
    if kind == "bernoulli":
        return [_syntra("auto", "auto"), *(_syntra(rule, rule) for rule in SYNTRA_BERNOULLI_RULES),
                *_peer_bernoulli()]
    if kind == "linear":
        return [
            _syntra("auto", "auto", features=True),
            _syntra("linucb", "linucb", features=True),
            _syntra("lints", "lints", features=True),
            _syntra("thompson, no features", "thompson"),
            _river("LinUCBDisjoint", lambda m, s: m[0].LinUCBDisjoint(seed=s), contextual=True),
            _vw("epsilon 0.05, -q SA", "-q SA", contextual=True),
            _vw("squarecb, -q SA", "--squarecb -q SA", contextual=True),
            _mabwiser("LinUCB", lambda lp: lp.LinUCB(), contextual=True),
            _mabwiser("LinTS", lambda lp: lp.LinTS(), contextual=True),
        ]
    if kind == "drift":
        return [
            _syntra("auto", "auto"),
            _syntra("auto, drift on", "auto", DRIFT_ON),
            _syntra("auto, drift off", "auto", DRIFT_OFF),
            _syntra("thompson", "thompson"),
            _syntra("thompson, drift on", "thompson", DRIFT_ON),
            _syntra("thompson, drift off", "thompson", DRIFT_OFF),
            _syntra("ucb1", "ucb1"),
            *_peer_bernoulli(),
        ]
    raise ValueError(f"world must be one of {WORLDS}, got {kind!r}")


# ---------------------------------------------------------------------------------------
# Scores, targets and the table


@dataclass(frozen=True)
class Score:
    family: str
    policy: str
    regrets: tuple[float, ...]  # one per seed
    seconds: float = 0.0  # wall time of every run together

    @property
    def mean(self) -> float:
        return float(np.mean(self.regrets))

    @property
    def stderr(self) -> float:
        """Standard error of the mean over seeds (0 with a single seed)."""
        if len(self.regrets) < 2:
            return 0.0
        return float(np.std(self.regrets, ddof=1) / math.sqrt(len(self.regrets)))


@dataclass(frozen=True)
class Target:
    description: str
    status: str  # "met", "NOT met" or "not evaluated"
    detail: str


@dataclass
class Report:
    world: str
    seeds: int
    rounds: int
    uniform_regret: float  # mean over seeds of the uniform policy's expected regret
    scores: list[Score] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (family, policy, reason)

    def score(self, family: str, policy: str) -> Score | None:
        return next((s for s in self.scores if (s.family, s.policy) == (family, policy)), None)

    def skip_reason(self, family: str, policy: str) -> str | None:
        return next((r for f, p, r in self.skipped if (f, p) == (family, policy)), None)

    def best(self, family: str) -> Score | None:
        """The family's best default: its lowest mean regret among the policies that ran."""
        own = [s for s in self.scores if s.family == family]
        return min(own, key=lambda s: s.mean) if own else None

    @property
    def reference(self) -> Score | None:
        return self.score(*REFERENCE)

    def best_peer(self) -> Score | None:
        peers = [b for b in map(self.best, PEER_FAMILIES) if b is not None]
        return min(peers, key=lambda s: s.mean) if peers else None

    def targets(self) -> list[Target]:
        if self.world in ("bernoulli", "linear"):
            return [self._auto_vs_peers()]
        if self.world == "drift":
            return [self._drift_on_vs_off(rule) for rule in ("auto", "thompson")]
        return []

    def _auto_vs_peers(self) -> Target:
        description = f"{self.world}: regret of syntra auto <= the best peer's"
        auto, peer = self.reference, self.best_peer()
        if auto is None:
            return Target(description, "not evaluated",
                          self.skip_reason(*REFERENCE) or "syntra auto did not run")
        if peer is None:
            return Target(description, "not evaluated", "no peer ran")
        status = "met" if auto.mean <= peer.mean else "NOT met"
        return Target(description, status, f"auto {auto.mean:.1f} +- {auto.stderr:.1f} vs "
                                           f"{peer.family} {peer.policy} {peer.mean:.1f} +- {peer.stderr:.1f}")

    def _drift_on_vs_off(self, rule: str) -> Target:
        description = f"drift: regret of syntra {rule} with drift detection <= 0.5x with it off"
        on, off = self.score("syntra", f"{rule}, drift on"), self.score("syntra", f"{rule}, drift off")
        if on is None or off is None:
            missing = f"{rule}, drift on" if on is None else f"{rule}, drift off"
            return Target(description, "not evaluated",
                          self.skip_reason("syntra", missing) or f"syntra {missing} did not run")
        status = "met" if on.mean <= 0.5 * off.mean else "NOT met"
        ratio = on.mean / off.mean if off.mean > 0 else math.inf
        return Target(description, status, f"on {on.mean:.1f} +- {on.stderr:.1f}, off {off.mean:.1f} +- "
                                           f"{off.stderr:.1f} (ratio {ratio:.2f})")

    def extra_info(self) -> dict:
        """Plain-JSON figures for ``benchmark.extra_info``."""
        info = {
            "world": self.world, "seeds": self.seeds, "rounds": self.rounds,
            "uniform_regret": round(self.uniform_regret, 3),
            "reference": "/".join(REFERENCE),
        }
        reference = self.reference
        for s in self.scores:
            entry = {"mean_regret": round(s.mean, 3), "stderr": round(s.stderr, 3),
                     "us_per_round": round(s.seconds / (self.seeds * self.rounds) * 1e6, 2)}
            if reference is not None and reference.mean > 0:
                entry["ratio_to_auto"] = round(s.mean / reference.mean, 3)
            info[f"{s.family}/{s.policy}"] = entry
        info["best_default"] = {f: f"{b.policy}" for f in FAMILIES if (b := self.best(f)) is not None}
        info["skipped"] = {f"{f}/{p}": reason for f, p, reason in self.skipped}
        info["targets"] = {t.description: f"{t.status}: {t.detail}" for t in self.targets()}
        return info


def format_table(report: Report) -> str:
    """The regret table: contender, policy, mean regret, stderr, ratio to Syntra auto.
    A ``*`` marks each contender's best default."""
    reference = report.reference
    header = (f"{report.world} world: expected regret over {report.rounds:,} rounds, mean of "
              f"{report.seeds} seed{'s' if report.seeds != 1 else ''}")
    rows = [("contender", "policy", "mean regret", "stderr", "ratio to syntra auto")]
    bests = {id(b) for b in map(report.best, FAMILIES) if b is not None}
    for s in report.scores:
        if reference is not None and reference.mean > 0:
            ratio = f"{s.mean / reference.mean:.2f}"
        else:
            ratio = "-"
        marked = f"{s.policy} *" if id(s) in bests else s.policy
        rows.append((s.family, marked, f"{s.mean:.1f}", f"{s.stderr:.1f}", ratio))
    uniform_ratio = (f"{report.uniform_regret / reference.mean:.2f}"
                     if reference is not None and reference.mean > 0 else "-")
    rows.append(("reference", "uniform random (analytic)", f"{report.uniform_regret:.1f}", "-", uniform_ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if reference is None:
        lines.append("ratio column empty: syntra auto did not run")
    for family, policy, reason in report.skipped:
        lines.append(f"skipped {family} {policy}: {reason}")
    for target in report.targets():
        lines.append(f"target {target.status}: {target.description} ({target.detail})")
    return "\n".join(lines)


def evaluate(kind: str, seeds: int, chosen: Sequence[Contender] | None = None) -> Report:
    """Run every contender (or ``chosen``) on seeds 1 .. ``seeds`` of world ``kind``."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    worlds = [make_world(kind, seed) for seed in range(1, seeds + 1)]
    report = Report(kind, seeds, worlds[0].rounds,
                    float(np.mean([w.uniform_regret() for w in worlds])))
    for contender in (contenders(kind) if chosen is None else chosen):
        regrets, seconds = [], 0.0
        try:
            for seed, world in enumerate(worlds, start=1):
                result = play(world, contender.make(world, seed))
                regrets.append(result.regret)
                seconds += result.seconds
        except Unavailable as exc:
            report.skipped.append((contender.family, contender.policy, str(exc)))
            continue
        report.scores.append(Score(contender.family, contender.policy, tuple(regrets), seconds))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worlds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=WORLDS, required=True)
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds (default: the benchmark's full count for the world)")
    args = parser.parse_args(argv)
    seeds = FULL_SEEDS[args.world] if args.seeds is None else args.seeds
    if seeds < 1:
        parser.error(f"--seeds must be at least 1, got {seeds}")
    print(format_table(evaluate(args.world, seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
