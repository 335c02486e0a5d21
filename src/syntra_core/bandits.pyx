"""Sufficient statistics per context, and the first decision rules.

An :class:`ArmTable` keeps, for every context it has seen and every arm, the number of
rewards observed, their sum and their sum of squares. Rules read it and never write it,
so all rules learn from every feedback and a meta-bandit can switch between them freely.

Each rule returns an arm **and the probability it had of choosing that arm** (the
propensity), which off-policy evaluation needs.

* :class:`BetaThompson` is Thompson sampling for rewards in a bounded range, with a
  Beta posterior per arm (fractional rewards count as fractional successes). Thompson
  sampling plays each arm with the posterior probability that it is the best one. This
  implementation computes those probabilities directly, by Monte Carlo over ``samples``
  posterior draws, and then draws the arm from them. So the logged propensity is exactly
  the probability the arm was played with.

  Off-policy evaluation divides by propensities, so none may be 0: the probabilities carry
  an explicit exploration floor. With ``wins_k`` the number of draws arm ``k`` won, it is
  played with probability ``(wins_k + 1/arms) / (samples + 1)``. Each arm keeps at least
  ``1 / (arms * (samples + 1))``, and the floor takes ``1 / (samples + 1)`` in total
  whatever the arm count, so a clear winner still gets at least ``samples / (samples + 1)``
  of the plays, with 256 arms as with 2.

  The probabilities of a context are cached and recomputed once the observations since the
  last refresh reach ``max_staleness`` times the observations at that refresh (and at
  least one), which is batched Thompson sampling: cheap per decision, and still exact
  about its propensity.
* :class:`UCB1` (Auer et al., 2002) plays an unplayed arm first, then the arm with the
  highest ``mean + exploration * sqrt(2 ln N / n)`` on rewards scaled to [0, 1]. Ties are
  broken uniformly at random and the propensity says so.

Example:

>>> from syntra_core.bandits import ArmTable, BetaThompson
>>> table = ArmTable(n_arms=3)
>>> rule = BetaThompson(table)
>>> arm, propensity = rule.select("support", seed=7, sequence=0)
>>> 0 <= arm < 3 and 0.0 < propensity <= 1.0
True
>>> table.update("support", arm, 1.0)
>>> int(table.pulls("support").sum())
1
"""

from cpython.mem cimport PyMem_Realloc, PyMem_Free
from libc.math cimport isfinite, log, sqrt, INFINITY
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset

from syntra_core.rng cimport Stream, stream_init, next_double, next_below, beta

import operator

import numpy as np

MAX_ARMS = 256
DEFAULT_SAMPLES = 128  # posterior draws behind each BetaThompson probability estimate


cdef void* _resize(void* block, size_t size) except NULL:
    cdef void* grown = PyMem_Realloc(block, size)
    if grown == NULL:
        raise MemoryError()
    return grown


cdef UpdateStatus _reward_status(ArmTable table, double reward) noexcept nogil:
    if not isfinite(reward):
        return UPDATE_NOT_FINITE
    if reward < table.reward_low or reward > table.reward_high:
        return UPDATE_OUT_OF_RANGE
    if table.binary and reward != table.reward_low and reward != table.reward_high:
        return UPDATE_NOT_BINARY
    return UPDATE_OK


cdef int _arm_index(ArmTable table, object arm) except -1:
    # operator.index refuses floats, so 1.5 is never truncated to arm 1; a bool is a
    # Python int, but as an arm it is a bug in the caller.
    if isinstance(arm, (bool, np.bool_)):
        raise TypeError(f"arm must be an integer, got {arm!r}")
    try:
        index = operator.index(arm)
    except TypeError:
        raise TypeError(f"arm must be an integer, got {type(arm).__name__} {arm!r}") from None
    if not 0 <= index < table.n_arms:
        raise ValueError(f"arm {index} out of range 0..{table.n_arms - 1}")
    return index


cdef class ArmTable:
    """Sufficient statistics for ``n_arms`` arms in every context seen so far.

    Rewards must be finite and lie in ``[reward_low, reward_high]``; with ``binary`` they
    must be exactly one of the two ends. Context keys are any hashable value; rows are
    created on first use and never removed.
    """

    def __cinit__(self, int n_arms, double reward_low=0.0, double reward_high=1.0,
                  bint binary=False):
        if not 1 <= n_arms <= MAX_ARMS:
            raise ValueError(f"n_arms must be in 1..{MAX_ARMS}, got {n_arms}")
        if not (isfinite(reward_low) and isfinite(reward_high)) or reward_low >= reward_high:
            raise ValueError(
                f"reward range must be finite with low < high, got [{reward_low}, {reward_high}]"
            )
        self.n_arms = n_arms
        self.reward_low = reward_low
        self.reward_high = reward_high
        self.binary = binary
        self._rows = {}
        self._keys = []
        self.n_rows = 0
        self.capacity = 0
        self.stats = NULL
        self.row_pulls = NULL

    def __dealloc__(self):
        PyMem_Free(self.stats)
        PyMem_Free(self.row_pulls)

    cdef Py_ssize_t find_row(self, object key):
        row = self._rows.get(key)
        return -1 if row is None else <Py_ssize_t>row

    cdef Py_ssize_t row_for(self, object key) except -1:
        cdef Py_ssize_t row = self.find_row(key)
        if row >= 0:
            return row
        hash(key)  # reject unhashable keys before touching any state
        if self.n_rows == self.capacity:
            self._grow(max(8, 2 * self.capacity))
        row = self.n_rows
        memset(self.stats + row * self.n_arms, 0, self.n_arms * sizeof(ArmStats))
        self.row_pulls[row] = 0
        self.n_rows += 1
        self._rows[key] = row
        self._keys.append(key)
        return row

    cdef int _grow(self, Py_ssize_t capacity) except -1:
        self.stats = <ArmStats*>_resize(self.stats, capacity * self.n_arms * sizeof(ArmStats))
        self.row_pulls = <int64_t*>_resize(self.row_pulls, capacity * sizeof(int64_t))
        self.capacity = capacity
        return 0

    cdef UpdateStatus update_c(self, Py_ssize_t row, int arm, double reward) noexcept nogil:
        if arm < 0 or arm >= self.n_arms:
            return UPDATE_BAD_ARM
        cdef UpdateStatus status = _reward_status(self, reward)
        if status != UPDATE_OK:
            return status
        cdef ArmStats* s = self.row_stats(row) + arm
        s.pulls += 1
        s.reward_sum += reward
        s.reward_sq += reward * reward
        self.row_pulls[row] += 1
        return UPDATE_OK

    cdef UpdateStatus check_reward(self, double reward) noexcept nogil:
        return _reward_status(self, reward)

    def update(self, key, arm, double reward):
        """Record one reward for ``arm`` in context ``key``.

        Raises TypeError if ``arm`` is not an integer (bools included) and ValueError if the
        arm is out of range or the reward is invalid. A refused update changes nothing: it
        does not even create the row of a new context.
        """
        cdef int index = _arm_index(self, arm)
        check_update(_reward_status(self, reward), self, index, reward)
        cdef Py_ssize_t row = self.row_for(key)
        check_update(self.update_c(row, index, reward), self, index, reward)

    def export_state(self):
        """The table's exact state: context keys and the raw statistics arrays.

        Context keys must be strings. :meth:`import_state` on an empty table with the same
        shape restores it bit for bit.
        """
        for key in self._keys:
            if type(key) is not str:
                raise TypeError(f"only string context keys can be exported, got {key!r}")
        return {
            "contexts": list(self._keys),
            "stats": (<char*>self.stats)[:self.n_rows * self.n_arms * sizeof(ArmStats)],
            "row_pulls": (<char*>self.row_pulls)[:self.n_rows * sizeof(int64_t)],
        }

    def import_state(self, state):
        """Load :meth:`export_state` output into this empty table. Raises ValueError if it does not fit."""
        if self.n_rows:
            raise ValueError("import_state needs an empty table")
        contexts = list(state["contexts"])
        cdef bytes stats = bytes(state["stats"])
        cdef bytes row_pulls = bytes(state["row_pulls"])
        cdef Py_ssize_t rows = len(contexts)
        if len(set(contexts)) != rows or not all(type(k) is str for k in contexts):
            raise ValueError("table state: context keys must be distinct strings")
        if len(stats) != rows * self.n_arms * sizeof(ArmStats) or len(row_pulls) != rows * sizeof(int64_t):
            raise ValueError(f"table state: arrays do not match {rows} contexts x {self.n_arms} arms")
        if rows:
            self._grow(rows)
            memcpy(self.stats, <char*>stats, len(stats))
            memcpy(self.row_pulls, <char*>row_pulls, len(row_pulls))
        self.n_rows = rows
        self._keys = contexts
        self._rows = {key: row for row, key in enumerate(contexts)}

    @property
    def contexts(self):
        """The context keys seen so far, in order of first use."""
        return tuple(self._keys)

    def __len__(self):
        return self.n_rows

    def __contains__(self, key):
        return key in self._rows

    def _field(self, key, int which):
        cdef Py_ssize_t row = self.find_row(key)
        if row < 0:
            raise KeyError(key)
        out = np.empty(self.n_arms, dtype=np.int64 if which == 0 else np.float64)
        cdef ArmStats* s = self.row_stats(row)
        cdef int k
        for k in range(self.n_arms):
            out[k] = s[k].pulls if which == 0 else (s[k].reward_sum if which == 1 else s[k].reward_sq)
        return out

    def pulls(self, key):
        """Rewards observed per arm in context ``key`` (int64 array)."""
        return self._field(key, 0)

    def reward_sums(self, key):
        """Sum of rewards per arm in context ``key``."""
        return self._field(key, 1)

    def reward_squares(self, key):
        """Sum of squared rewards per arm in context ``key``."""
        return self._field(key, 2)


def check_update(UpdateStatus status, ArmTable table not None, int arm, double reward):
    """Raise the ValueError that describes a failed ``update_c``; do nothing on success."""
    if status == UPDATE_OK:
        return
    if status == UPDATE_BAD_ARM:
        raise ValueError(f"arm {arm} out of range 0..{table.n_arms - 1}")
    if status == UPDATE_NOT_FINITE:
        raise ValueError(f"reward must be finite, got {reward!r}")
    if status == UPDATE_NOT_BINARY:
        raise ValueError(
            f"reward must be {table.reward_low} or {table.reward_high}, got {reward!r}"
        )
    raise ValueError(
        f"reward {reward!r} outside [{table.reward_low}, {table.reward_high}]"
    )


cdef class Rule:
    """A decision rule over an :class:`ArmTable`. Subclasses implement ``select_c``."""

    def __cinit__(self, ArmTable table not None, *args, **kwargs):
        self.table = table
        self.cache_rows = 0

    cdef int prepare(self, Py_ssize_t row) except -1:
        """Make per-row caches cover ``row``. Called with the GIL before ``select_c``."""
        return 0

    cdef int select_c(self, Py_ssize_t row, Stream* st, double* propensity) noexcept nogil:
        propensity[0] = 1.0
        return 0

    def export_state(self):
        """The rule's own state beyond the shared table (none for stateless rules)."""
        return {}

    def import_state(self, state):
        """Load :meth:`export_state` output; the table must already hold its state."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")

    def select(self, key, uint64_t seed, uint64_t sequence):
        """Choose an arm for context ``key`` with the stream of ``(seed, sequence)``.

        Returns ``(arm, propensity)``.
        """
        cdef Py_ssize_t row = self.table.row_for(key)
        self.prepare(row)
        cdef Stream st
        cdef double propensity
        cdef int arm
        stream_init(&st, seed, sequence)
        arm = self.select_c(row, &st, &propensity)
        return arm, propensity


cdef class BetaThompson(Rule):
    """Beta-Bernoulli Thompson sampling with exact propensities (see the module docs).

    ``prior_a`` and ``prior_b`` are the Beta prior; ``samples`` is the number of posterior
    draws behind each probability estimate; ``max_staleness`` bounds how far the data may
    move before the probabilities are recomputed (0 recomputes after every observation).
    """

    def __cinit__(self, ArmTable table not None, double prior_a=1.0, double prior_b=1.0,
                  int samples=DEFAULT_SAMPLES, double max_staleness=1.0 / 32):
        for name, value in (("prior_a", prior_a), ("prior_b", prior_b)):
            if not isfinite(value) or value <= 0.0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not 1 <= samples <= 1_000_000:
            raise ValueError(f"samples must be in 1..1000000, got {samples}")
        if not isfinite(max_staleness) or not 0.0 <= max_staleness <= 1.0:
            raise ValueError(f"max_staleness must be in [0, 1], got {max_staleness!r}")
        self.prior_a = prior_a
        self.prior_b = prior_b
        self.samples = samples
        self.max_staleness = max_staleness
        self.win_prob = NULL
        self.refreshed_at = NULL

    def __dealloc__(self):
        PyMem_Free(self.win_prob)
        PyMem_Free(self.refreshed_at)

    cdef int prepare(self, Py_ssize_t row) except -1:
        if row < self.cache_rows:
            return 0
        cdef Py_ssize_t rows = max(8, 2 * self.cache_rows, row + 1)
        self.win_prob = <double*>_resize(self.win_prob, rows * self.table.n_arms * sizeof(double))
        self.refreshed_at = <int64_t*>_resize(self.refreshed_at, rows * sizeof(int64_t))
        cdef Py_ssize_t r
        for r in range(self.cache_rows, rows):
            self.refreshed_at[r] = -1
        self.cache_rows = rows
        return 0

    cdef void refresh(self, Py_ssize_t row, Stream* st) noexcept nogil:
        cdef int n = self.table.n_arms
        cdef ArmStats* s = self.table.row_stats(row)
        cdef double* probs = self.win_prob + row * n
        cdef double width = self.table.reward_high - self.table.reward_low
        cdef double successes, best_draw, draw
        cdef int k, m, best
        # The posterior shapes go in `probs` first; the win counts replace them below.
        cdef double a[256]
        cdef double b[256]
        for k in range(n):
            successes = (s[k].reward_sum - s[k].pulls * self.table.reward_low) / width
            a[k] = self.prior_a + successes
            b[k] = self.prior_b + (s[k].pulls - successes)
            probs[k] = 0.0
        for m in range(self.samples):
            best = 0
            best_draw = -1.0
            for k in range(n):
                draw = beta(st, a[k], b[k])
                if draw > best_draw:
                    best_draw = draw
                    best = k
            probs[best] += 1.0
        # Exploration floor (see the module docs): total mass 1/(samples+1) whatever n is.
        for k in range(n):
            probs[k] = (probs[k] + 1.0 / n) / (self.samples + 1.0)
        self.refreshed_at[row] = self.table.row_pulls[row]

    cdef int select_c(self, Py_ssize_t row, Stream* st, double* propensity) noexcept nogil:
        cdef int n = self.table.n_arms
        cdef int64_t seen = self.table.row_pulls[row]
        cdef int64_t last = self.refreshed_at[row]
        cdef int64_t due
        if last < 0:
            self.refresh(row, st)
        elif seen > last:
            due = <int64_t>(last * self.max_staleness)
            if seen - last >= (due if due > 1 else 1):
                self.refresh(row, st)
        cdef double* probs = self.win_prob + row * n
        cdef double u = next_double(st)
        cdef double cumulative = 0.0
        cdef int k
        for k in range(n - 1):
            cumulative += probs[k]
            if u < cumulative:
                propensity[0] = probs[k]
                return k
        propensity[0] = probs[n - 1]
        return n - 1

    def export_state(self):
        cdef Py_ssize_t rows = min(self.cache_rows, self.table.n_rows)
        return {
            "win_prob": (<char*>self.win_prob)[:rows * self.table.n_arms * sizeof(double)],
            "refreshed_at": (<char*>self.refreshed_at)[:rows * sizeof(int64_t)],
        }

    def import_state(self, state):
        cdef bytes probs = bytes(state["win_prob"])
        cdef bytes at = bytes(state["refreshed_at"])
        cdef Py_ssize_t rows = len(at) // sizeof(int64_t)
        if (len(at) != rows * sizeof(int64_t) or rows > self.table.n_rows
                or len(probs) != rows * self.table.n_arms * sizeof(double)):
            raise ValueError("thompson state does not match the table")
        if rows:
            self.prepare(rows - 1)
            memcpy(self.win_prob, <char*>probs, len(probs))
            memcpy(self.refreshed_at, <char*>at, len(at))

    def probabilities(self, key):
        """The cached play probabilities of context ``key``, or None before its first decision."""
        cdef Py_ssize_t row = self.table.find_row(key)
        if row < 0 or row >= self.cache_rows or self.refreshed_at[row] < 0:
            return None
        cdef int n = self.table.n_arms
        return np.array([self.win_prob[row * n + k] for k in range(n)])

    def last_refresh(self, key):
        """Observations of context ``key`` when its probabilities were last computed, or None."""
        cdef Py_ssize_t row = self.table.find_row(key)
        if row < 0 or row >= self.cache_rows or self.refreshed_at[row] < 0:
            return None
        return self.refreshed_at[row]


cdef inline double _ucb_score(const ArmStats* arm, double low, double width, double log_total,
                              double exploration) noexcept nogil:
    """Mean reward scaled to [0, 1] plus the confidence bonus; +inf for an unplayed arm."""
    if arm.pulls == 0:
        return INFINITY
    return ((arm.reward_sum / arm.pulls) - low) / width + exploration * sqrt(2.0 * log_total / arm.pulls)


cdef class UCB1(Rule):
    """UCB1 on rewards scaled to [0, 1]; ``exploration`` scales the confidence bonus."""

    def __cinit__(self, ArmTable table not None, double exploration=1.0):
        if not isfinite(exploration) or exploration < 0.0:
            raise ValueError(f"exploration must be a finite number >= 0, got {exploration!r}")
        self.exploration = exploration

    cdef int select_c(self, Py_ssize_t row, Stream* st, double* propensity) noexcept nogil:
        cdef int n = self.table.n_arms
        cdef ArmStats* s = self.table.row_stats(row)
        cdef double low = self.table.reward_low
        cdef double width = self.table.reward_high - low
        cdef double log_total = log(<double>self.table.row_pulls[row]) if self.table.row_pulls[row] > 0 else 0.0
        cdef double best_score = -INFINITY
        cdef double scores[256]
        cdef int k, ties = 0, chosen = 0, pick
        for k in range(n):
            scores[k] = _ucb_score(&s[k], low, width, log_total, self.exploration)
            if scores[k] > best_score:
                best_score = scores[k]
                chosen = k
                ties = 1
            elif scores[k] == best_score:
                ties += 1
        if ties > 1:  # pick one of the tied arms uniformly
            pick = <int>next_below(st, <uint64_t>ties)
            for k in range(n):
                if scores[k] == best_score:
                    if pick == 0:
                        chosen = k
                        break
                    pick -= 1
        propensity[0] = 1.0 / ties
        return chosen


def run_bernoulli(Rule rule not None, means, Py_ssize_t rounds, uint64_t seed, key=None):
    """Play ``rounds`` decide+update rounds against Bernoulli arms, entirely in C.

    Each round derives its stream from ``(seed, round)``, selects an arm with ``rule`` in
    context ``key`` and feeds back a Bernoulli reward drawn with that arm's mean. Returns
    the number of plays per arm. Used by the benchmarks and for fast offline what-ifs.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    cdef ArmTable table = rule.table
    cdef double[::1] p = np.ascontiguousarray(means, dtype=np.float64)
    if p.shape[0] != table.n_arms:
        raise ValueError(f"expected {table.n_arms} means, got {p.shape[0]}")
    if table.reward_low != 0.0 or table.reward_high != 1.0:
        raise ValueError("run_bernoulli needs a table with reward range [0, 1]")
    cdef Py_ssize_t k
    for k in range(p.shape[0]):
        if not (isfinite(p[k]) and 0.0 <= p[k] <= 1.0):
            raise ValueError(f"means must lie in [0, 1], got {p[k]!r}")
    cdef Py_ssize_t row = table.row_for(key)
    rule.prepare(row)
    plays = np.zeros(table.n_arms, dtype=np.int64)
    cdef int64_t[::1] counts = plays
    cdef Stream st
    cdef double propensity
    cdef int arm
    cdef Py_ssize_t t
    with nogil:
        for t in range(rounds):
            stream_init(&st, seed, <uint64_t>t)
            arm = rule.select_c(row, &st, &propensity)
            counts[arm] += 1
            table.update_c(row, arm, 1.0 if next_double(&st) < p[arm] else 0.0)
    return plays
