"""A capsule's learning policy: lifecycle, candidates, meta-bandit, drift, refusal, floors.

:class:`Policy` decides *which option to serve, with what probability*, and learns from
each reward; the capsule's compiled :class:`~syntra_core.learner.Learner` keeps the ledger
and the shared per-context statistics. Everything here is a deterministic function of the
calls made and the capsule seed, so a replay of the log rebuilds it bit for bit.

Lifecycle:

* ``warmup``: options are served uniformly at random until ``warmup.feedbacks`` rewards
  have trained the capsule. The rewards seen are then characterised as ``binary``,
  ``sparse`` (at least 80% at the range's low end) or ``continuous``, which picks the
  candidate the meta-bandit starts from.
* ``active``: the meta-bandit's shares mix the candidates' option probabilities; the
  served option's propensity is that mixture's probability, exactly.
* ``frozen`` (an operator's action): serve from the current state, learn nothing, log
  everything. Unfreezing resumes learning where it stopped.

Drift (ADWIN, one detector per option because the reward of the capsule as a whole rises
as it learns): at capsule scope a change returns the capsule to warmup with fresh
statistics; at context scope it resets that context's statistics only. A context's
detectors read its rewards scaled to [0, 1]. The capsule's read the same while the capsule
has one context; with several, each reward's surprise against its (context, option) mean
so far, since learning alone moves the contexts an option is played in and with them its
pooled mean. Every transition is returned as an event for the capsule to audit.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from syntra_core.meta import CandidateMix

from syntra.errors import FailedPrecondition, InvalidContext
from syntra.learning import candidates as candidate_rules
from syntra.learning.config import LearningConfig
from syntra.learning.hierarchy import Hierarchy
from syntra.learning.drift import Adwin
from syntra.learning.meta import MetaBandit
from syntra.learning.refusal import RefusalPolicy
from syntra.learning.regimes import MAX_MAGNITUDE as MAX_METRIC_MAGNITUDE, RegimeMonitor

WARMUP, ACTIVE, FROZEN = "warmup", "active", "frozen"
# Context-scope drift keeps one detector per (context, option): bounded, because a
# capsule may see unboundedly many contexts. Contexts past the bound get capsule scope only.
MAX_CONTEXT_DETECTORS = 4096
# Rewards at the range's low end for the warmup sample to count as sparse.
SPARSE_SHARE = 0.8
# An option needs this many rewards in a context before a quality floor can exclude it.
FLOOR_MIN_PULLS = 5
# Decisions that got their default reward after waiting, remembered so late feedback on
# them says so (older ones are reported as plain duplicates).
MAX_EXPIRED = 65536
# Each candidate's stream is the capsule seed plus this times (candidate + 1), so no two
# candidates, nor the policy's own draws (candidate -1: the seed itself), share a stream.
_STREAM_STRIDE = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class Pending:
    """What the policy remembers of a decision until its reward arrives."""

    context_key: str
    arm: int
    propensity: float
    targets: tuple[float, ...]     # each candidate's probability of the served option
    candidate: int                 # the candidate that served; -1 in warmup
    x: np.ndarray | None
    prediction: float
    refused: str | None
    regime: str | None
    ts_ns: int
    meta: bool = True              # False once a budget swapped the option (propensity 1)
    signals: dict[str, float] = field(default_factory=dict)
    # Shadow capsules: every candidate's probability of every option (candidate-major), so
    # the meta-bandit can weigh the option the caller actually took.
    all_targets: tuple[float, ...] | None = None

    def export(self, sequence: int) -> dict[str, Any]:
        out = {
            "sequence": sequence, "context_key": self.context_key, "arm": self.arm,
            "propensity": self.propensity, "targets": list(self.targets),
            "candidate": self.candidate,
            "x": None if self.x is None else self.x.tobytes(),
            "prediction": self.prediction, "refused": self.refused, "regime": self.regime,
            "ts_ns": self.ts_ns, "meta": self.meta, "signals": dict(self.signals),
        }
        if self.all_targets is not None:   # absent otherwise: other capsules' state is unchanged
            out["all_targets"] = list(self.all_targets)
        return out

    @classmethod
    def load(cls, entry: Mapping[str, Any]) -> tuple[int, Pending]:
        x = None if entry["x"] is None else np.frombuffer(bytes(entry["x"]), dtype=np.float64).copy()
        all_targets = entry.get("all_targets")
        return int(entry["sequence"]), cls(
            str(entry["context_key"]), int(entry["arm"]), float(entry["propensity"]),
            tuple(float(t) for t in entry["targets"]), int(entry["candidate"]), x,
            float(entry["prediction"]), entry["refused"], entry["regime"], int(entry["ts_ns"]),
            bool(entry["meta"]), {str(k): float(v) for k, v in entry["signals"].items()},
            None if all_targets is None else tuple(float(t) for t in all_targets))

    def as_taken(self, arm: int, propensity: float, n_arms: int) -> None:
        """Make this the record of option ``arm``, taken with ``propensity`` by the caller's
        own policy (a shadow capsule's feedback): learning credits that option, and the
        meta-bandit weighs the candidates by their probability of it."""
        if arm != self.arm:
            # The prediction was for the suggested option: it calibrates nothing here.
            self.prediction = math.nan
            if self.all_targets is None:   # decided before the candidates' rows were kept
                self.meta = False
            else:
                self.targets = self.all_targets[arm::n_arms]
        self.arm, self.propensity = arm, propensity


@dataclass(frozen=True, slots=True)
class Choice:
    """What :meth:`Policy.choose` decided."""

    arm: int
    propensity: float
    refusal: str | None
    confidence: dict[str, Any] | None


class Policy:
    """The learning policy of one capsule. See the module docs.

    ``config`` is the full learning config (``LearningConfig.to_dict()``), ``reward`` the
    capsule's reward spec, ``table`` the learner's shared statistics and ``encoder`` the
    context encoder of its ``contextSpec``. ``tuned`` gives the candidates the learning
    layer's own defaults (see :data:`syntra.learning.candidates.TUNED`); a capsule
    without a learning config runs its rule's plain defaults.
    """

    def __init__(self, config: Mapping[str, Any], options: tuple[str, ...], reward, table, seed: int,
                 encoder, candidate_names: list[str], *, tuned: bool = True, shadow: bool = False):
        self.config = config
        self.shadow = shadow   # decisions are suggestions: feedback says what was taken
        self.options = options
        self.reward = reward
        self.table = table
        self.seed = seed
        self.encoder = encoder
        self.features = encoder.dim if config["contextSpec"]["kind"] == "features" else None
        option_features = None
        if config.get("optionFeatures"):
            option_features = np.array([config["optionFeatures"][o] for o in options], dtype=np.float64)
        self.candidates = [
            candidate_rules.build(
                name, table=table, n_arms=len(options), dim=self.features,
                settings=config["settings"] if len(candidate_names) == 1 else {},
                linear_config=config["linear"], option_features=option_features, tuned=tuned)
            for name in candidate_names
        ]
        meta = config["meta"]
        self.meta = MetaBandit(
            candidate_names, method=meta["method"], estimator=meta["estimator"],
            weight_cap=meta["weight_cap"], exploration_floor=meta["exploration_floor"],
            learning_rate=meta["learning_rate"], seed=seed)
        self.warmup_feedbacks = config["warmup"]["feedbacks"]
        self.lifecycle = WARMUP if self.warmup_feedbacks > 0 else ACTIVE
        self.trained = 0                 # rewards trained since the lifecycle last (re)started
        self.warmup_rewards: list[float] = []
        self.reward_kind: str | None = None
        self.initial_candidate: str | None = None if self.lifecycle == WARMUP else candidate_names[0]
        drift = config["drift"]
        self.drift_enabled = drift["enabled"]
        self.capsule_detectors = [self._detector(drift["capsule_delta"]) for _ in options] if self.drift_enabled else []
        self.context_detectors: dict[tuple[str, int], Adwin] = {}
        # Whether the capsule detectors read surprises (see _capsule_value), not rewards.
        self.capsule_surprise = False
        self.drift_events: list[dict[str, Any]] = []
        self.refusal = (RefusalPolicy(config["refusal"], feature_dim=self.features)
                        if config["refusal"]["enabled"] else None)
        self.refusals: dict[str, int] = {}
        regimes = config["regimes"]
        self.regimes = RegimeMonitor(regimes) if regimes["enabled"] else None
        actions = LearningConfig.parse(config).actions
        self.hierarchy = (Hierarchy(actions, reward_low=table.reward_low, reward_high=table.reward_high, seed=seed)
                          if actions.kind == "hierarchical" else None)
        self.pending: dict[int, Pending] = {}
        # With a reward wait: the pending sequences in decision order, for the overdue scan
        # (a dict's front, once expired, would be rescanned on every pass). Entries whose
        # decision is no longer pending are dropped lazily.
        self._waits = config["feedback"]["reward_wait_seconds"] is not None
        self._order: deque[int] = deque()
        # sequence -> ts_ns its default reward was applied; ordered so the oldest is dropped
        # in O(1) (a dict's front, once deleted from, is rescanned by every next(iter())).
        self.expired: OrderedDict[int, int] = OrderedDict()
        self.floor_bps: int | None = None
        self.skipped_updates = 0   # linear updates a model refused (see learn)
        # One decision's arithmetic runs in C (syntra_core.meta): the rules over the shared
        # table are filled there; other candidates (linear models) write their row from here.
        scalar = [isinstance(c, candidate_rules.ScalarCandidate) for c in self.candidates]
        seeds = [_candidate_seed(seed, index) for index in range(len(self.candidates))]
        self._mixer = CandidateMix(table, [c.rule if s else None for c, s in zip(self.candidates, scalar)],
                                   seeds, seed)
        self._probabilities = self._mixer.probabilities
        self._scalar = scalar
        self._filled_by_python = [(index, candidate, seeds[index])
                                  for index, candidate in enumerate(self.candidates) if not scalar[index]]
        self._linear = [c for c in self.candidates if c.linear]

    def _detector(self, delta: float) -> Adwin:
        drift = self.config["drift"]
        return Adwin(delta=delta, clock=drift["clock"], min_window_length=drift["min_window"],
                     grace_period=drift["grace_period"])

    # --- deciding -----------------------------------------------------------------------

    def encode(self, context_key: str, features: Mapping[str, Any] | None,
               metrics: Mapping[str, Any] | None) -> tuple[str, np.ndarray | None, str | None, float | None]:
        """Check the decision's inputs: (context key, feature vector, regime, metric)."""
        x = None
        if self.features is not None:
            if features is None:
                raise InvalidContext("this capsule decides from features: pass features={...}")
            if context_key:
                x = self.encoder.encode(features)
            else:
                x, context_key = self.encoder.encode_with_regime(features)
        elif features is not None:
            raise InvalidContext("this capsule's contextSpec is discrete: it takes a context key, not features")
        regime = metric = None
        if self.regimes is not None:
            name = self.config["regimes"]["metric"]
            regime = context_key
            if name is not None:
                if metrics is None or name not in metrics:
                    raise InvalidContext(f"metrics.{name} is missing: this capsule's regimes monitor it")
                metric = _metric(name, metrics[name])
            unknown = set(metrics or ()) - ({name} if name else set())
            if unknown:
                raise InvalidContext(f"unknown metrics {sorted(unknown)}: this capsule monitors {name!r}")
        elif metrics:
            raise InvalidContext("this capsule monitors no metric (regimes are off): metrics are not accepted")
        return context_key, x, regime, metric

    def choose(self, sequence: int, context_key: str, x: np.ndarray | None, regime: str | None,
               metric: float | None, ts_ns: int) -> Choice:
        """Choose the option for decision ``sequence``; remember it until its reward."""
        # The regime sees every request's metric, in warmup too (frozen, it only reads its
        # statistics); its floor gates the mixture once active. First, as nothing may change
        # before a refusal.
        frozen = self.lifecycle == FROZEN
        floor = self.floor_bps = None if self.regimes is None else self._quality_floor(regime, metric, frozen)
        mixer = self._mixer
        mixer.fill(context_key, sequence)
        for index, candidate, seed in self._filled_by_python:
            candidate.distribution_into(context_key, x, seed, sequence, self._probabilities[index])
        # The policy's own draws come from the stream of (seed, sequence): the option's
        # uniform first, then the serving candidate's.
        if self.lifecycle == WARMUP:
            arm = mixer.warmup_arm(sequence)
            propensity, candidate_index = mixer.propensity, -1
        elif self.hierarchy is not None:
            arm, level_propensity = self.hierarchy.choose(context_key, sequence)
            propensity, candidate_index = float(level_propensity), -1
        else:
            meta = self.meta.core()
            if floor is None:
                arm = mixer.mix_pick(meta, sequence)
            else:
                arm = mixer.pick(self._apply_floor(mixer.mix_shares(meta), context_key, floor), meta, sequence)
            # The serving candidate is the one a two-stage draw would have used: for the
            # report only, as the option's propensity is the mixture's.
            propensity, candidate_index = mixer.propensity, mixer.candidate
        refusal = confidence = None
        serving = max(candidate_index, 0)
        if self._scalar[serving]:   # the table's mean, which the fill just read
            prediction = mixer.table_mean(arm)
        else:
            prediction = self.candidates[serving].predict(self.table, context_key, x, arm)
        if self.refusal is not None:
            key = None if x is not None else context_key
            assessment = self.refusal.assess(prediction, x=x, key=key)
            # Every context counts towards what is "in distribution", refused or not: else a
            # refused context would stay unseen, and refused, for ever. Frozen learns nothing.
            if not frozen:
                self.refusal.observe_context(x=x, key=key)
            confidence = assessment.to_dict()
            # Warmup serves every decision: their outcomes are what calibrates the interval.
            refusal = assessment.reason if assessment.refused and self.lifecycle != WARMUP else None
            if refusal is not None:
                self.refusals[refusal] = self.refusals.get(refusal, 0) + 1
        if candidate_index >= 0 and refusal is None and not frozen:
            self.meta.served(candidate_index)
        if self._waits:
            self._remember_order(sequence)
        entry = self.pending[sequence] = Pending(
            context_key, arm, propensity, mixer.targets(arm), candidate_index,
            None if x is None else x.copy(), prediction, refusal, regime, ts_ns,
            # meta (positional, cheaper than a keyword): when the levels chose, not the
            # candidates' mixture, there is nothing to weigh the candidates by.
            self.hierarchy is None or self.lifecycle == WARMUP)
        if self.shadow:
            entry.all_targets = tuple(self._probabilities.ravel().tolist())
        return Choice(arm, propensity, refusal, confidence)

    def _remember_order(self, sequence: int) -> None:
        order = self._order
        order.append(sequence)
        if len(order) > 2 * len(self.pending) + 1024:   # mostly stale: rebuild (amortised O(1))
            pending = self.pending
            self._order = deque(s for s in order if s in pending or s == sequence)

    def _quality_floor(self, regime: str | None, metric: float | None, frozen: bool) -> int | None:
        if self.regimes is None:
            return None
        if metric is None:
            return self.regimes.floor(regime)
        if frozen:
            return self.regimes.peek(regime, metric).floor_bps
        return self.regimes.assess(regime, metric).floor_bps

    def _apply_floor(self, mixture: np.ndarray, context_key: str, floor_bps: int) -> np.ndarray:
        """The mixture without options whose learned quality is known to be under the floor;
        unchanged when that would exclude every option (serving beats refusing here)."""
        if context_key not in self.table:
            return mixture
        pulls = self.table.pulls(context_key)
        sums = self.table.reward_sums(context_key)
        low, width = self.table.reward_low, self.table.reward_high - self.table.reward_low
        keep = np.ones(len(mixture), dtype=bool)
        for arm in range(len(mixture)):
            if pulls[arm] >= FLOOR_MIN_PULLS:
                quality_bps = 10000.0 * (sums[arm] / pulls[arm] - low) / width
                keep[arm] = quality_bps >= floor_bps
        kept = mixture * keep
        total = kept.sum()
        return mixture if total <= 0 else kept / total

    def substituted(self, sequence: int, arm: int) -> None:
        """A budget served ``arm`` instead (with propensity 1): the meta-bandit skips it."""
        entry = self.pending[sequence]
        entry.arm = arm
        entry.propensity = 1.0
        entry.meta = False

    def forget(self, sequence: int) -> None:
        """Drop a decision that was refused before it was served (budget, program)."""
        self.pending.pop(sequence, None)

    # --- learning -----------------------------------------------------------------------

    def signal(self, sequence: int, name: str, value: float) -> float | None:
        """Record one named signal of a decision; the fused reward once complete, else None."""
        entry = self.pending[sequence]
        signals = dict(entry.signals)
        signals[name] = value
        fused = self.reward.fuse_signals(self.config["feedback"]["signals"], self.config["feedback"]["fusion"],
                                         signals)
        entry.signals = signals
        return fused

    def trains(self, sequence: int) -> bool:
        """Whether the reward of decision ``sequence`` will train (not frozen, not refused)."""
        entry = self.pending.get(sequence)
        return self.lifecycle != FROZEN and (entry is None or entry.refused is None)

    def learn(self, sequence: int, reward: float, trained: bool,
              taken: tuple[int, float] | None = None) -> list[dict[str, Any]]:
        """Account the reward of decision ``sequence`` (the table has it if ``trained``).
        ``taken`` (a shadow capsule's feedback) is the option the caller's own policy took
        and its propensity: they are credited instead of the suggestion. Returns the
        lifecycle events it caused, for the capsule to audit."""
        entry = self.pending.pop(sequence, None)
        if entry is None or not trained:
            return []
        if taken is not None:
            entry.as_taken(taken[0], taken[1], len(self.options))
        scaled = _scaled(self.reward, reward)
        events: list[dict[str, Any]] = []
        for candidate in self._linear:   # on the [0, 1] scale, whatever the reward range
            try:
                candidate.learn(entry.arm, entry.x, scaled)
            except ValueError:
                # The model refuses an update that would make it non-finite (extreme option
                # features over a tiny regularization). The ledger has settled: skip it here
                # as replay will, and count it.
                self.skipped_updates += 1
        if self.hierarchy is not None:
            self.hierarchy.learn(entry.context_key, entry.arm, reward)
        if entry.meta:
            self.meta.observe(entry.targets, entry.propensity, scaled)
        if self.refusal is not None and entry.prediction == entry.prediction:   # NaN: no prediction
            self.refusal.observe(entry.prediction, reward)
        if self.regimes is not None and entry.regime is not None:
            self.regimes.record_outcome(entry.regime, scaled >= 0.5)
        self.trained += 1
        if self.lifecycle == WARMUP:
            self.warmup_rewards.append(scaled)
            if self.trained >= self.warmup_feedbacks:
                events.append(self._finish_warmup())
        if self.drift_enabled:
            events.extend(self._watch_drift(sequence, entry, reward, scaled))
        return events

    def _finish_warmup(self) -> dict[str, Any]:
        rewards = self.warmup_rewards
        if all(r in (0.0, 1.0) for r in rewards):
            kind = "binary"
        elif sum(r == 0.0 for r in rewards) >= SPARSE_SHARE * len(rewards):
            kind = "sparse"
        else:
            kind = "continuous"
        if self.features is not None:   # the linear rules use the features; the others cannot
            preferred = ("linucb", "lints")
        else:
            preferred = {"binary": ("thompson",), "sparse": ("thompson",), "continuous": ("gaussian_thompson",)}[kind]
        names = [c.name for c in self.candidates]
        initial = next((n for n in preferred if n in names), names[0])
        # The warmup's rewards (warmup.feedbacks of them, unless an update ended it early).
        head_start = self.config["meta"]["prior_trials"] or max(self.trained, 1)
        self.meta = _with_initial(self.meta, initial, head_start)
        self.reward_kind, self.initial_candidate = kind, initial
        self.lifecycle = ACTIVE
        self.warmup_rewards = []
        return {"event": "warmup_complete", "from": WARMUP, "to": ACTIVE, "reward_kind": kind,
                "initial_candidate": initial, "feedbacks": self.trained}

    def _watch_drift(self, sequence: int, entry: Pending, reward: float, scaled: float) -> list[dict[str, Any]]:
        arm, context_key = entry.arm, entry.context_key
        key = (context_key, arm)
        detector = self.context_detectors.get(key)
        if detector is None:
            delta = self.config["drift"]["context_delta"]
            if delta is not None and len(self.context_detectors) < MAX_CONTEXT_DETECTORS:
                detector = self.context_detectors[key] = self._detector(delta)
        value = self._capsule_value(context_key, arm, reward, scaled, detector)
        # ``value`` is a float in [0, 1]: past the wrapper's type checks, straight to the
        # compiled detector (which still checks the value).
        if value is not None and self.capsule_detectors[arm].update_checked(value):
            return [self._capsule_drift(sequence, arm)]
        if detector is None or not detector.update_checked(scaled):
            return []
        self.table.reset_context(context_key)
        if self.hierarchy is not None:
            self._reset_levels(context_key)
        for other in range(len(self.options)):
            found = self.context_detectors.get((context_key, other))
            if found is not None:
                found.reset()
        event = {"event": "drift", "scope": "context", "context": context_key,
                 "option": self.options[arm], "sequence": sequence}
        self.drift_events.append(event)
        return [event]

    def _capsule_value(self, context_key: str, arm: int, reward: float, scaled: float,
                       detector: Adwin | None) -> float | None:
        """What the capsule detector of ``arm`` reads for this reward (None: nothing).

        In a capsule of one context, the scaled reward itself. Once there are several, an
        option's pooled reward moves whenever learning shifts the contexts it is played in,
        so the detector reads the reward's *surprise* instead: ``(1 + scaled - baseline) / 2``,
        where the baseline is the mean scaled reward of ``arm`` in ``context_key`` before this
        one, since the context's statistics last (re)started (None for the first reward).
        The baseline's error is no bias (earlier rewards are independent of the next), so
        the surprise stays at 0.5 on average whatever the mix of contexts; and as a mean
        since the last reset it absorbs a change by only 1/n per reward, so the detector
        sees the change for about as long as it would have seen the reward's own.

        The baseline is ``detector``'s window mean (the pair's context-scope detector: its
        window holds every reward since it started, as its cuts reset the context), else
        the table's (which has this reward already), past MAX_CONTEXT_DETECTORS."""
        table = self.table
        if len(table) <= 1:   # one context: no mix to correct for
            return scaled
        if not self.capsule_surprise:
            # A second context appeared: the windows hold rewards, not surprises.
            for capsule_detector in self.capsule_detectors:
                capsule_detector.reset()
            self.capsule_surprise = True
        if detector is not None:
            if detector.width == 0:
                return None
            return 0.5 + 0.5 * (scaled - detector.estimation)
        pulls = int(table.pulls(context_key)[arm]) - 1
        if pulls < 1:
            return None
        low = table.reward_low
        width = table.reward_high - low
        before = (float(table.reward_sums(context_key)[arm]) - reward) / pulls
        return 0.5 + 0.5 * (scaled - (before - low) / width)

    def _capsule_drift(self, sequence: int, arm: int) -> dict[str, Any]:
        """Restart the capsule after a capsule-scope change; the event, recorded."""
        before = self.lifecycle
        self._restart_after_drift()
        # Back to warmup, or straight on (with fresh statistics) when warmup.feedbacks is 0.
        event = {"event": "drift", "scope": "capsule", "option": self.options[arm],
                 "sequence": sequence, "from": before, "to": self.lifecycle}
        self.drift_events.append(event)
        return event

    def _reset_levels(self, context_key: str) -> None:
        """Forget what the hierarchy's levels learned in ``context_key`` (rows keyed
        ``context|path``; the path holds no ``|``, so the last one splits them exactly)."""
        for table in self.hierarchy.tables:
            for key in [k for k in table.contexts if k.rpartition("|")[0] == context_key]:
                table.reset_context(key)

    def _restart_after_drift(self) -> None:
        self.table.reset_all()
        if self.hierarchy is not None:
            self.hierarchy.reset()
        for candidate in self.candidates:
            candidate.reset()
        for detector in self.capsule_detectors:
            detector.reset()
        self.context_detectors.clear()
        if self.refusal is not None:
            self.refusal = RefusalPolicy(self.config["refusal"], feature_dim=self.features)
        if self.warmup_feedbacks > 0:
            self.lifecycle = WARMUP
        self.trained = 0
        self.warmup_rewards = []

    # --- operator actions ------------------------------------------------------------------

    def check_action(self, action: str) -> None:
        """Raise :class:`~syntra.errors.FailedPrecondition` if ``action`` does not apply now."""
        if action == "freeze" and self.lifecycle == FROZEN:
            raise FailedPrecondition("the capsule is already frozen")
        if action == "unfreeze" and self.lifecycle != FROZEN:
            raise FailedPrecondition(f"the capsule is {self.lifecycle}, not frozen")

    def freeze(self) -> dict[str, Any]:
        self.check_action("freeze")
        event = {"event": "freeze", "from": self.lifecycle, "to": FROZEN}
        self._thawed = self.lifecycle
        self.lifecycle = FROZEN
        return event

    def unfreeze(self) -> dict[str, Any]:
        self.check_action("unfreeze")
        self.lifecycle = getattr(self, "_thawed", ACTIVE)
        return {"event": "unfreeze", "from": FROZEN, "to": self.lifecycle}

    def carry_over(self, old: Policy) -> list[dict[str, Any]]:
        """Take over what ``old`` (the policy this one replaces) learned and owes, wherever
        this config still fits it: the lifecycle, the pending decisions, and each part's
        state when its settings did not change. When the new ``warmup.feedbacks`` is no
        more than the rewards trained already, warmup ends here as a feedback would have
        ended it. Returns the lifecycle events this caused, for the capsule to audit."""
        self.lifecycle, self.trained = old.lifecycle, old.trained
        if hasattr(old, "_thawed"):
            self._thawed = old._thawed
        self.warmup_rewards, self.reward_kind = old.warmup_rewards, old.reward_kind
        self.initial_candidate = old.initial_candidate
        self.expired, self.drift_events, self.refusals = old.expired, old.drift_events, old.refusals
        self.skipped_updates = old.skipped_updates
        same_candidates = [c.name for c in self.candidates] == [c.name for c in old.candidates]
        for entry in old.pending.values():
            if not same_candidates:   # its targets are the old candidates' probabilities
                entry.meta = False
        self.pending = old.pending
        if self._waits:
            self._order = old._order if old._waits else deque(self.pending)
        config, previous = self.config, old.config
        if same_candidates and config["meta"] == previous["meta"]:
            self.meta = old.meta
        if same_candidates and config["linear"] == previous["linear"] and config["settings"] == previous["settings"]:
            for mine, theirs in zip(self.candidates, old.candidates):
                mine.import_state(theirs.export_state())
        if config["drift"] == previous["drift"]:
            self.capsule_detectors, self.context_detectors = old.capsule_detectors, old.context_detectors
            self.capsule_surprise = old.capsule_surprise
        if config["refusal"] == previous["refusal"] and old.refusal is not None:
            self.refusal = old.refusal
        if config["regimes"] == previous["regimes"] and old.regimes is not None:
            self.regimes = old.regimes
        self.hierarchy = old.hierarchy   # actions cannot change: the levels are the same
        warming = self.lifecycle == WARMUP or (self.lifecycle == FROZEN and getattr(self, "_thawed", None) == WARMUP)
        if not warming or self.trained < self.warmup_feedbacks:
            return []
        lifecycle = self.lifecycle
        if self.trained == 0:   # nothing to characterise: start active as an install would
            self.initial_candidate, self.lifecycle = self.candidates[0].name, ACTIVE
            event = {"event": "warmup_complete", "from": WARMUP, "to": ACTIVE, "reward_kind": None,
                     "initial_candidate": self.initial_candidate, "feedbacks": 0}
        else:
            event = self._finish_warmup()
        if lifecycle == FROZEN:   # it stays frozen, and resumes active
            self.lifecycle, self._thawed = FROZEN, ACTIVE
        return [event]

    def restart_after_reward(self, old: Policy) -> list[dict[str, Any]]:
        """Take over from ``old`` (the policy of the reward spec this one's replaces, whose
        type or range differed) what is not learned of rewards: the decisions awaiting
        theirs, the expiry, drift and refusal history, the regimes' view of their metric,
        and a freeze. Everything learned of rewards starts afresh, back to warmup as a
        capsule-scope drift does. A pending decision's reward is then checked against the
        new spec and trains as any other, except that its prediction (on the old scale)
        calibrates nothing and any signals it had (in the old units) are dropped, to be
        sent again. Returns the lifecycle event, to audit."""
        fresh = self.lifecycle
        if old.lifecycle == FROZEN:   # it stays frozen, and resumes where a fresh start would
            self._thawed, self.lifecycle = fresh, FROZEN
        same_candidates = [c.name for c in self.candidates] == [c.name for c in old.candidates]
        for entry in old.pending.values():
            entry.prediction = math.nan
            entry.signals = {}
            if not same_candidates:   # its targets are the old candidates' probabilities
                entry.meta = False
        self.pending = old.pending
        if self._waits:
            self._order = deque(self.pending)
        self.expired, self.drift_events, self.refusals = old.expired, old.drift_events, old.refusals
        self.skipped_updates = old.skipped_updates
        if old.regimes is not None:   # the same config: its metric's statistics still hold
            self.regimes = old.regimes
        return [{"event": "reward_reset", "from": old.lifecycle, "to": self.lifecycle}]

    # --- waiting for rewards -------------------------------------------------------------

    def overdue(self, now_ns: int, limit: int | None = None) -> list[int]:
        """Pending decisions whose reward wait has run out, oldest first (at most ``limit``).

        ``pending`` holds decisions in sequence order (insertion order), and their times
        are non-decreasing unless the wall clock stepped back, so the scan stops at the
        first decision not yet due: the cost is the number returned, not the number
        pending. After a backward clock step a decision due already may wait behind an
        older one that is not: every decision returned is due, in sequence order, and the
        late one is returned once the one before it is."""
        wait = self.config["feedback"]["reward_wait_seconds"]
        if wait is None or (limit is not None and limit <= 0):
            return []
        due_by = now_ns - int(wait * 1e9)
        order, pending = self._order, self.pending
        while order and order[0] not in pending:   # settled since: forget them
            order.popleft()
        out: list[int] = []
        for sequence in order:
            entry = pending.get(sequence)
            if entry is None:
                continue
            if entry.ts_ns > due_by:
                break
            out.append(sequence)
            if len(out) == limit:
                break
        return out

    def expire(self, sequence: int, ts_ns: int) -> None:
        self.expired[sequence] = ts_ns
        while len(self.expired) > MAX_EXPIRED:
            self.expired.popitem(last=False)

    # --- reporting and state ---------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        out = {
            "lifecycle": self.lifecycle,
            "reward_kind": self.reward_kind,
            "initial_candidate": self.initial_candidate,
            "feedbacks_since_start": self.trained,
            "candidates": self.meta.report(),
            "drift_events": list(self.drift_events),
            "refusals": dict(sorted(self.refusals.items())),
            "skipped_updates": self.skipped_updates,
        }
        if self.lifecycle == WARMUP:
            out["warmup_remaining"] = max(self.warmup_feedbacks - self.trained, 0)
        if self.regimes is not None:
            out["regimes"] = self.regimes.report()
        if self.hierarchy is not None:
            out["levels"] = self.hierarchy.report()
        return out

    def export_state(self) -> dict[str, Any]:
        return {
            "lifecycle": self.lifecycle,
            "thawed": getattr(self, "_thawed", None),
            "trained": self.trained,
            "warmup_rewards": list(self.warmup_rewards),
            "reward_kind": self.reward_kind,
            "initial_candidate": self.initial_candidate,
            "meta": self.meta.export_state(),
            "meta_initial": [self.meta.initial, self.meta.prior_trials],
            "candidates": [c.export_state() for c in self.candidates],
            "capsule_detectors": [d.export_state() for d in self.capsule_detectors],
            "capsule_surprise": self.capsule_surprise,
            "context_detectors": [[k, a, d.export_state()] for (k, a), d in self.context_detectors.items()],
            "drift_events": list(self.drift_events),
            "refusal": None if self.refusal is None else self.refusal.export_state(),
            "refusals": dict(sorted(self.refusals.items())),
            "skipped_updates": self.skipped_updates,
            "regimes": None if self.regimes is None else self.regimes.export_state(),
            "hierarchy": None if self.hierarchy is None else self.hierarchy.export_state(),
            "pending": [entry.export(seq) for seq, entry in sorted(self.pending.items())],
            "expired": [[seq, ts] for seq, ts in self.expired.items()],
        }

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`export_state` output into this fresh policy."""
        self.lifecycle = state["lifecycle"]
        if state["thawed"] is not None:
            self._thawed = state["thawed"]
        self.trained = int(state["trained"])
        self.warmup_rewards = [float(r) for r in state["warmup_rewards"]]
        self.reward_kind = state["reward_kind"]
        self.initial_candidate = state["initial_candidate"]
        initial, prior = state["meta_initial"]
        if initial is not None:
            self.meta = _with_initial(self.meta, initial, prior)
        self.meta.import_state(state["meta"])
        if len(state["candidates"]) != len(self.candidates):
            raise ValueError("policy state has a different number of candidates")
        for candidate, entry in zip(self.candidates, state["candidates"]):
            candidate.import_state(entry)
        if len(state["capsule_detectors"]) != len(self.capsule_detectors):
            raise ValueError("policy state has a different number of drift detectors")
        for detector, entry in zip(self.capsule_detectors, state["capsule_detectors"]):
            detector.import_state(entry)
        # Absent from states written before surprises: their windows hold rewards.
        self.capsule_surprise = bool(state.get("capsule_surprise", False))
        delta = self.config["drift"]["context_delta"]
        for key, arm, entry in state["context_detectors"]:
            detector = self._detector(delta)
            detector.import_state(entry)
            self.context_detectors[(key, int(arm))] = detector
        self.drift_events = list(state["drift_events"])
        if self.refusal is not None and state["refusal"] is not None:
            self.refusal.import_state(state["refusal"])
        self.refusals = dict(state["refusals"])
        self.skipped_updates = int(state.get("skipped_updates", 0))
        if self.regimes is not None and state["regimes"] is not None:
            self.regimes.import_state(state["regimes"])
        if self.hierarchy is not None:
            self.hierarchy.import_state(state["hierarchy"])
        self.pending = dict(Pending.load(entry) for entry in state["pending"])
        self._order = deque(self.pending) if self._waits else deque()
        self.expired = OrderedDict((int(seq), int(ts)) for seq, ts in state["expired"])


def _metric(name: str, value: object) -> float:
    """``metrics.<name>`` as a float, refused here if the regime monitor would refuse it
    (so a refused decision changes nothing)."""
    number = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:   # an int beyond any float
            pass
    if not -MAX_METRIC_MAGNITUDE <= number <= MAX_METRIC_MAGNITUDE:   # False for NaN
        raise InvalidContext(f"metrics.{name} must be a finite number with magnitude <= "
                             f"{MAX_METRIC_MAGNITUDE:g}, got {value!r}")
    return number


def _candidate_seed(seed: int, index: int) -> int:
    """The stream seed of candidate ``index`` (see ``_STREAM_STRIDE``)."""
    return (seed + _STREAM_STRIDE * (index + 1)) & _MASK64


def _scaled(spec, reward: float) -> float:
    """``spec.normalize(reward)``: a float the spec accepts (the learner checked it) is
    mapped directly, anything else goes through the spec's checks."""
    if type(reward) is float:
        low, high = spec.low, spec.high
        if low <= reward <= high and (spec.type != "bernoulli" or reward == 0.0 or reward == 1.0):
            value = (reward + 0.0 - low) / (high - low)
            # min(1.0, max(0.0, value)) without the builtins' call overhead.
            value = value if value > 0.0 else 0.0  # noqa: FURB136
            return value if value < 1.0 else 1.0  # noqa: FURB136
    return spec.normalize(reward)


def _with_initial(meta: MetaBandit, initial: str, prior_trials: int) -> MetaBandit:
    """``meta`` with ``initial`` given its head start; the evidence so far is kept."""
    fresh = MetaBandit(meta.names, method=meta.method, estimator=meta.estimator,
                       weight_cap=meta.weight_cap, exploration_floor=meta.exploration_floor,
                       learning_rate=meta.learning_rate, initial=initial,
                       prior_trials=prior_trials, seed=meta.seed)
    fresh.import_state(meta.export_state())
    return fresh
