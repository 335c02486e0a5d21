"""The meta-bandit's arithmetic, and the mixing of candidate rules, in C.

A learning capsule's ``auto`` policy serves each decision from a mixture of candidate
rules. :class:`MetaCore` keeps what the meta-bandit learns about each candidate and the
shares that mix them; :class:`CandidateMix` does one decision's work: every candidate's
play probabilities, their mixture by the shares, and the draw of the option (and, for the
report, of the candidate a two-stage draw would have used). ``syntra.learning.meta`` and
``syntra.learning.policy`` document and drive them.

Off-policy evaluation. When option ``a`` was served with probability ``mu(a)`` and
candidate ``c`` would have played it with probability ``pi_c(a)``, the capped importance
weight ``w_c = min(pi_c(a) / (mu(a) + ix), weight_cap)`` (Ionides, "Truncated importance
sampling", J. Comput. Graph. Stat. 2008) turns the reward ``r`` in [0, 1] into an estimate
of ``c``'s value: ``sum(w_c r) / n`` (``ips``, Horvitz-Thompson) or
``sum(w_c r) / sum(w_c)`` (``snips``; Swaminathan and Joachims, "The Self-Normalized
Estimator for Counterfactual Learning", NeurIPS 2015).

Shares (``exp3ix``): exponential weights on the estimated cumulative gains,
``q_c ∝ exp(eta (n V_c + h_c))``, with the anytime Hedge rate ``eta = sqrt(8 ln C / n)``
(Cesa-Bianchi and Lugosi, *Prediction, Learning, and Games*, 2006, section 2.3), implicit
exploration ``ix = eta / 2`` (Neu, "Explore no more", NeurIPS 2015) and ``h_c`` the head
start of the initial candidate. Then an exploration floor: ``share_c = (1 - f) q_c + f / C``.
Shares are recomputed lazily, before the next decision that reads them, not after every
observation. The ``thompson`` method's win counts are computed by the caller and loaded
with :meth:`MetaCore.load_raw`, which applies the same floor.

Drawing follows inversion: the first option whose cumulative probability exceeds a
uniform draw, where an option of probability 0 (one a quality floor excluded) is never
drawn, not even when rounding leaves the draw above the total.

Example:

>>> from syntra_core.meta import MetaCore
>>> core = MetaCore(2, exploration_floor=0.1)
>>> core.shares()
[0.5, 0.5]
>>> for _ in range(200):
...     core.observe([0.9, 0.1], 0.5, 1.0)   # "0" would have played the rewarded option
...     core.observe([0.1, 0.9], 0.5, 0.0)
>>> shares = core.shares()
>>> shares[0] > 0.9, abs(sum(shares) - 1.0) < 1e-12
(True, True)
>>> core.choose(0.5), core.choose(0.99)
(0, 1)
"""

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.math cimport exp, log, sqrt, isfinite
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset

from syntra_core.bandits cimport ArmStats, ArmTable, Rule
from syntra_core.rng cimport Stream, stream_init, next_double, next_below

import numbers

import numpy as np

METHODS = ("exp3ix", "thompson")
ESTIMATORS = ("ips", "snips")
# Counts are int64 in C; state beyond that is malformed, not merely large.
MAX_COUNT = 2**63 - 1


cdef void* _alloc(size_t size) except NULL:
    cdef void* block = PyMem_Malloc(size if size > 0 else 1)
    if block == NULL:
        raise MemoryError()
    memset(block, 0, size)
    return block


def _count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {value!r}")
    return int(value)


def _amount(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not (isfinite(number) and number >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


cdef int pick_c(const double* probabilities, int n, double u) noexcept nogil:
    """The option ``u`` (uniform in [0, 1)) falls on; never one of probability 0.

    -1 only if no option has positive probability.
    """
    cdef double cumulative = 0.0
    cdef int k, chosen = -1
    for k in range(n):
        if probabilities[k] > 0.0:
            chosen = k
            cumulative += probabilities[k]
            if u < cumulative:
                return k
    return chosen


cdef int mix_pick_c(const double* probs, int n_candidates, int n_arms, const double* shares, double u,
                    double* mixture) noexcept nogil:
    """``mixture = shares . probs`` (probs row-major, a row per candidate), then the
    option ``u`` falls on (as :func:`pick_c`)."""
    cdef int a, c
    cdef double total
    for a in range(n_arms):
        total = 0.0
        for c in range(n_candidates):
            total += shares[c] * probs[c * n_arms + a]
        mixture[a] = total
    return pick_c(mixture, n_arms, u)


cdef void draw_uniforms_c(uint64_t seed, uint64_t sequence, int k, double* out) noexcept nogil:
    """The first ``k`` uniforms of the stream of ``(seed, sequence)``."""
    cdef Stream st
    cdef int i
    stream_init(&st, seed, sequence)
    for i in range(k):
        out[i] = next_double(&st)


def pick(double[::1] probabilities not None, double u):
    """The option a uniform draw ``u`` in [0, 1) falls on (see the module docs)."""
    if not (0.0 <= u < 1.0):
        raise ValueError(f"u must be in [0, 1), got {u!r}")
    cdef int n = probabilities.shape[0]
    if n == 0:
        raise ValueError("probabilities must not be empty")
    cdef int chosen
    with nogil:
        chosen = pick_c(&probabilities[0], n, u)
    if chosen < 0:
        raise ValueError("no option has a positive probability")
    return chosen


cdef class MetaCore:
    """The meta-bandit's statistics and shares over ``n_candidates`` candidates.

    ``method`` is ``exp3ix`` or ``thompson`` (whose raw shares the caller computes and
    loads), ``estimator`` ``ips`` or ``snips``. ``learning_rate`` None uses the anytime
    rate. ``initial`` (an index, or -1) gets ``prior_trials`` pseudo-rounds at reward 1.
    """

    def __cinit__(self, int n_candidates, method="exp3ix", estimator="snips",
                  double weight_cap=20.0, double exploration_floor=0.05, learning_rate=None,
                  int initial=-1, prior_trials=0):
        self.trials_ = NULL
        self.weighted_gain_ = NULL
        self.weight_sum_ = NULL
        self.shares_ = NULL
        self.scratch = NULL
        if n_candidates < 1:
            raise ValueError(f"the meta-bandit needs at least one candidate, got {n_candidates}")
        if method not in METHODS:
            raise ValueError(f"meta.method must be one of {METHODS}, got {method!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"meta.estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if not (isfinite(weight_cap) and weight_cap >= 1.0):
            raise ValueError(f"meta.weight_cap must be a finite number >= 1, got {weight_cap!r}")
        if not (isfinite(exploration_floor) and 0.0 <= exploration_floor <= 0.5):
            raise ValueError(f"meta.exploration_floor must be in [0, 0.5], got {exploration_floor!r}")
        cdef double rate = 0.0
        if learning_rate is not None:
            if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
                raise ValueError(f"meta.learning_rate must be a finite number > 0, got {learning_rate!r}")
            rate = float(learning_rate)
            if not (isfinite(rate) and rate > 0.0):
                raise ValueError(f"meta.learning_rate must be a finite number > 0, got {learning_rate!r}")
        if not -1 <= initial < n_candidates:
            raise ValueError(f"initial must be a candidate index or -1, got {initial}")
        self.n_candidates = n_candidates
        self.exp3ix = method == "exp3ix"
        self.snips = estimator == "snips"
        self.weight_cap = weight_cap
        self.exploration_floor = exploration_floor
        self.learning_rate = rate
        self.initial = initial
        self.prior_trials = float(_count("prior_trials", prior_trials))
        self.observations = 0
        cdef size_t count = n_candidates
        self.trials_ = <int64_t*>_alloc(count * sizeof(int64_t))
        self.weighted_gain_ = <double*>_alloc(count * sizeof(double))
        self.weight_sum_ = <double*>_alloc(count * sizeof(double))
        self.shares_ = <double*>_alloc(count * sizeof(double))
        self.scratch = <double*>_alloc(count * sizeof(double))
        self.stale = True
        if self.exp3ix:
            self.refresh_c()

    def __dealloc__(self):
        PyMem_Free(self.trials_)
        PyMem_Free(self.weighted_gain_)
        PyMem_Free(self.weight_sum_)
        PyMem_Free(self.shares_)
        PyMem_Free(self.scratch)

    # --- C ---------------------------------------------------------------------------------

    cdef double rate_c(self, int64_t n) noexcept nogil:
        cdef int count = self.n_candidates if self.n_candidates > 2 else 2
        if self.learning_rate > 0.0:
            return self.learning_rate
        return sqrt(8.0 * log(<double>count) / <double>(n if n > 1 else 1))

    cdef void observe_c(self, const double* targets, double logging_probability, double reward) noexcept nogil:
        cdef double ix = self.rate_c(self.observations + 1) / 2.0 if self.exp3ix else 0.0
        cdef double weight
        cdef int c
        for c in range(self.n_candidates):
            weight = targets[c] / (logging_probability + ix)
            if self.weight_cap < weight:
                weight = self.weight_cap
            self.weighted_gain_[c] += weight * reward
            self.weight_sum_[c] += weight
        self.observations += 1
        self.stale = True

    cdef void refresh_c(self) noexcept nogil:
        """The exp3ix shares of the current statistics."""
        cdef int64_t n = self.observations
        cdef double eta = self.rate_c(n)
        cdef double* gains = self.scratch
        cdef double value, head, top = 0.0
        cdef int c
        for c in range(self.n_candidates):
            value = 0.0   # no evidence yet counts as 0
            if self.snips:
                if self.weight_sum_[c] > 0.0:
                    value = self.weighted_gain_[c] / self.weight_sum_[c]
            elif n > 0:
                value = self.weighted_gain_[c] / <double>n
            head = self.prior_trials if c == self.initial else 0.0
            gains[c] = eta * (value * <double>n + head)
            if c == 0 or gains[c] > top:
                top = gains[c]
        for c in range(self.n_candidates):
            gains[c] = exp(gains[c] - top)   # the largest is exp(0): no overflow
        self.load_raw_c(gains)

    cdef void load_raw_c(self, const double* raw) noexcept nogil:
        """Shares from raw positive weights: normalised, then floored."""
        cdef double total = 0.0
        cdef double floor = self.exploration_floor
        cdef int c
        for c in range(self.n_candidates):
            total += raw[c]
        for c in range(self.n_candidates):
            self.shares_[c] = (1.0 - floor) * raw[c] / total + floor / self.n_candidates
        self.stale = False

    cdef int choose_c(self, double u) noexcept nogil:
        cdef double cumulative = 0.0
        cdef int c
        for c in range(self.n_candidates):
            cumulative += self.shares_[c]
            if u < cumulative:
                return c
        return self.n_candidates - 1

    # --- Python ----------------------------------------------------------------------------

    def observe(self, targets, double logging_probability, double reward):
        """Account one feedback: each candidate's probability of the served option, the
        probability it was served with, and the reward scaled to [0, 1]. ValueError,
        changing nothing, for values out of range."""
        if not (0.0 < logging_probability <= 1.0):
            raise ValueError(f"logging probability must be in (0, 1], got {logging_probability!r}")
        if not (0.0 <= reward <= 1.0):
            raise ValueError(f"meta-bandit rewards are scaled to [0, 1], got {reward!r}")
        if len(targets) != self.n_candidates:
            raise ValueError(f"targets must hold one probability per candidate ({self.n_candidates}),"
                             f" got {len(targets)}")
        cdef double* values = self.scratch
        cdef double target
        cdef int c
        for c in range(self.n_candidates):
            target = targets[c]
            # No upper bound: a rule's probability may round a hair above 1; the cap holds.
            if not (isfinite(target) and target >= 0.0):
                raise ValueError(f"targets[{c}] must be a finite number >= 0, got {target!r}")
            values[c] = target
        with nogil:
            self.observe_c(values, logging_probability, reward)

    def refresh(self):
        """Recompute the exp3ix shares if an observation made them stale."""
        if not self.exp3ix:
            raise ValueError("thompson shares are computed outside the core: use load_raw")
        if self.stale:
            with nogil:
                self.refresh_c()

    def load_raw(self, raw):
        """Set the shares from raw weights (finite, > 0), one per candidate: normalised,
        then floored."""
        if len(raw) != self.n_candidates:
            raise ValueError(f"raw must hold one weight per candidate ({self.n_candidates}), got {len(raw)}")
        cdef double* values = self.scratch
        cdef double weight
        cdef int c
        for c in range(self.n_candidates):
            weight = raw[c]
            if not (isfinite(weight) and weight > 0.0):
                raise ValueError(f"raw[{c}] must be a finite number > 0, got {weight!r}")
            values[c] = weight
        with nogil:
            self.load_raw_c(values)

    def _check_current(self):
        if self.stale:
            if not self.exp3ix:
                raise ValueError("the thompson shares are stale: load_raw the new ones first")
            with nogil:
                self.refresh_c()

    def shares(self):
        """Each candidate's probability of serving the next decision."""
        self._check_current()
        return [self.shares_[c] for c in range(self.n_candidates)]

    def choose(self, double u):
        """The candidate that serves, for a uniform draw ``u`` in [0, 1)."""
        if not (0.0 <= u < 1.0):
            raise ValueError(f"u must be in [0, 1), got {u!r}")
        self._check_current()
        return self.choose_c(u)

    def served(self, int candidate):
        """Count a decision served by ``candidate``."""
        if not 0 <= candidate < self.n_candidates:
            raise ValueError(f"candidate {candidate} out of range 0..{self.n_candidates - 1}")
        self.trials_[candidate] += 1

    def trials(self):
        return [self.trials_[c] for c in range(self.n_candidates)]

    def weighted_gain(self):
        return [self.weighted_gain_[c] for c in range(self.n_candidates)]

    def weight_sum(self):
        return [self.weight_sum_[c] for c in range(self.n_candidates)]

    def values(self):
        """Each candidate's estimated value (reward scaled to [0, 1]); None before evidence."""
        cdef int c
        out = []
        for c in range(self.n_candidates):
            if self.snips:
                out.append(self.weighted_gain_[c] / self.weight_sum_[c] if self.weight_sum_[c] > 0 else None)
            else:
                out.append(self.weighted_gain_[c] / self.observations if self.observations else None)
        return out

    def export_state(self):
        """The statistics (plain values), for :meth:`import_state`."""
        return {"trials": self.trials(), "weighted_gain": self.weighted_gain(),
                "weight_sum": self.weight_sum(), "observations": self.observations}

    def import_state(self, state):
        """Restore :meth:`export_state` output exactly. ValueError, changing nothing, if it
        is malformed or for another number of candidates."""
        try:
            trials, gain, weights, observations = (
                state["trials"], state["weighted_gain"], state["weight_sum"], state["observations"])
        except (KeyError, TypeError):
            raise ValueError("meta-bandit state needs trials, weighted_gain, weight_sum and observations") from None
        count = self.n_candidates
        try:
            sizes = (len(trials), len(gain), len(weights))
        except TypeError:
            raise ValueError("meta-bandit state: trials, weighted_gain and weight_sum must be lists") from None
        if sizes != (count, count, count):
            raise ValueError("meta-bandit state does not match its candidates")
        trials = [_count(f"trials[{c}]", t) for c, t in enumerate(trials)]
        gain = [_amount(f"weighted_gain[{c}]", g) for c, g in enumerate(gain)]
        weights = [_amount(f"weight_sum[{c}]", w) for c, w in enumerate(weights)]
        observations = _count("observations", observations)
        cdef int c
        for c in range(count):
            self.trials_[c] = trials[c]
            self.weighted_gain_[c] = gain[c]
            self.weight_sum_[c] = weights[c]
        self.observations = observations
        self.stale = True
        if self.exp3ix:
            with nogil:
                self.refresh_c()


cdef int _current_shares(MetaCore meta, int n_candidates) except -1:
    """Bring ``meta``'s shares up to date (exp3ix) or refuse stale ones (thompson)."""
    if meta.n_candidates != n_candidates:
        raise ValueError(f"the meta-bandit has {meta.n_candidates} candidates, the mixture {n_candidates}")
    if meta.stale:
        if not meta.exp3ix:
            raise ValueError("the thompson shares are stale: load_raw the new ones first")
        with nogil:
            meta.refresh_c()
    return 0


cdef class CandidateMix:
    """One decision's work for a policy over candidate rules (see the module docs).

    ``rules`` has an entry per candidate: a :class:`~syntra_core.bandits.Rule` over
    ``table``, whose probabilities :meth:`fill` computes, or None for a candidate whose
    row of :attr:`probabilities` the caller writes. ``seeds`` are the candidates' stream
    seeds and ``seed`` the policy's own: every draw of decision ``sequence`` comes from a
    stream of ``(seed, sequence)``, so a replay draws the same.
    """

    def __cinit__(self, ArmTable table not None, rules, seeds, uint64_t seed):
        self.seeds = NULL
        rules = list(rules)
        seeds = list(seeds)
        if not rules:
            raise ValueError("a mixture needs at least one candidate")
        if len(seeds) != len(rules):
            raise ValueError(f"seeds must hold one seed per candidate ({len(rules)}), got {len(seeds)}")
        for c, rule in enumerate(rules):
            if rule is None:
                continue
            if not isinstance(rule, Rule):
                raise TypeError(f"rules[{c}] must be a syntra_core.bandits.Rule or None, got {type(rule).__name__}")
            if (<Rule>rule).table is not table:
                raise ValueError(f"rules[{c}] reads another table than the mixture's")
        self.n_candidates = len(rules)
        self.n_arms = table.n_arms
        self.table = table
        self.rules = rules
        self.has_rules = any(rule is not None for rule in rules)
        self.seed = seed
        self.row = -1
        self.propensity = 0.0
        self.candidate = -1
        self.seeds = <uint64_t*>_alloc(self.n_candidates * sizeof(uint64_t))
        for c, value in enumerate(seeds):
            self.seeds[c] = value
        self.probabilities = np.zeros((self.n_candidates, self.n_arms), dtype=np.float64)
        self.mixture = np.zeros(self.n_arms, dtype=np.float64)
        cdef double[:, ::1] probs = self.probabilities
        cdef double[::1] mix = self.mixture
        self.probs = &probs[0, 0]
        self.mix = &mix[0]

    def __dealloc__(self):
        PyMem_Free(self.seeds)

    def fill(self, key, uint64_t sequence):
        """Write each rule's play probabilities in context ``key`` into its row, each
        with its own stream of ``(seed, sequence)``, as its ``distribution_into`` would."""
        if not self.has_rules:
            return
        cdef Py_ssize_t row = self.table.row_for(key)
        cdef Stream st
        cdef Rule rule
        cdef int c
        self.row = row
        for c in range(self.n_candidates):
            candidate = self.rules[c]
            if candidate is None:
                continue
            rule = <Rule>candidate
            rule.prepare(row)
            stream_init(&st, self.seeds[c], sequence)
            rule.distribution_c(row, &st, self.probs + c * self.n_arms)

    def warmup_arm(self, uint64_t sequence):
        """Warmup: an option uniformly at random, from the stream of ``(seed, sequence)``."""
        cdef Stream st
        cdef int arm, a
        with nogil:
            stream_init(&st, self.seed, sequence)
            arm = <int>next_below(&st, <uint64_t>self.n_arms)
            for a in range(self.n_arms):
                self.mix[a] = 1.0 / self.n_arms
        self.propensity = min(self.mix[arm], 1.0)   # a sum of shares can round past 1
        self.candidate = -1
        return arm

    def mix_pick(self, MetaCore meta not None, uint64_t sequence):
        """Mix the candidates' probabilities by ``meta``'s shares and draw the option (the
        stream's first uniform) and the serving candidate (its second). Returns the
        option; :attr:`propensity` and :attr:`candidate` tell the rest."""
        _current_shares(meta, self.n_candidates)
        cdef double u[2]
        cdef int arm, candidate
        with nogil:
            draw_uniforms_c(self.seed, sequence, 2, u)
            arm = mix_pick_c(self.probs, self.n_candidates, self.n_arms, meta.shares_, u[0], self.mix)
            candidate = meta.choose_c(u[1])
        if arm < 0:
            raise ValueError("no option has a positive probability in the mixture")
        self.propensity = min(self.mix[arm], 1.0)   # a sum of shares can round past 1
        self.candidate = candidate
        return arm

    def mix_shares(self, MetaCore meta not None):
        """Only the mixture by ``meta``'s shares (into :attr:`mixture`, which is returned),
        for a caller that adjusts it before :meth:`pick`."""
        _current_shares(meta, self.n_candidates)
        cdef int a, c
        cdef double total
        with nogil:
            for a in range(self.n_arms):
                total = 0.0
                for c in range(self.n_candidates):
                    total += meta.shares_[c] * self.probs[c * self.n_arms + a]
                self.mix[a] = total
        return self.mixture

    def pick(self, double[::1] mixture not None, MetaCore meta not None, uint64_t sequence):
        """:meth:`mix_pick`'s draws on a given ``mixture`` (one probability per option)."""
        if mixture.shape[0] != self.n_arms:
            raise ValueError(f"mixture must have {self.n_arms} entries, got {mixture.shape[0]}")
        _current_shares(meta, self.n_candidates)
        cdef double u[2]
        cdef int arm, candidate
        with nogil:
            draw_uniforms_c(self.seed, sequence, 2, u)
            arm = pick_c(&mixture[0], self.n_arms, u[0])
            candidate = meta.choose_c(u[1])
        if arm < 0:
            raise ValueError("no option has a positive probability in the mixture")
        self.propensity = min(mixture[arm], 1.0)
        self.candidate = candidate
        return arm

    def targets(self, int arm):
        """Each candidate's probability of option ``arm`` (a tuple)."""
        if not 0 <= arm < self.n_arms:
            raise ValueError(f"arm {arm} out of range 0..{self.n_arms - 1}")
        cdef int c
        return tuple([self.probs[c * self.n_arms + arm] for c in range(self.n_candidates)])

    def table_mean(self, int arm):
        """The mean reward of ``arm`` in the context of the last :meth:`fill`; the range's
        midpoint before any reward."""
        if not 0 <= self.row < self.table.n_rows:
            raise ValueError("no context filled yet")
        if not 0 <= arm < self.n_arms:
            raise ValueError(f"arm {arm} out of range 0..{self.n_arms - 1}")
        cdef ArmStats* stats = self.table.row_stats(self.row) + arm
        if stats.pulls:
            return stats.reward_sum / <double>stats.pulls
        return (self.table.reward_low + self.table.reward_high) / 2
