"""Sufficient statistics per context, and the decision rules that read them.

An :class:`ArmTable` keeps, for every context it has seen and every arm, the number of
rewards observed, their sum and their sum of squares. Rules read it and never write it,
so all rules learn from every feedback and a meta-bandit can switch between them freely.

Each rule returns an arm **and the probability it had of choosing that arm** (the
propensity), which off-policy evaluation needs. Every rule also exposes its whole play
distribution for a context (:meth:`Rule.distribution`); ``select`` draws its arm from
exactly that distribution and logs the drawn arm's entry as the propensity.

* :class:`BetaThompson` is Thompson sampling for rewards in a bounded range, with a
  Beta posterior per arm (fractional rewards count as fractional successes).
  :class:`GaussianThompson` (Agrawal and Goyal, 2013) is Thompson sampling for
  continuous rewards, with a Normal posterior of each arm's mean. Thompson sampling
  plays each arm with the posterior probability that it is the best one. Both compute
  those probabilities directly, by Monte Carlo over ``samples`` posterior draws, and
  then draw the arm from them. So the logged propensity is exactly the probability the
  arm was played with.

  Off-policy evaluation divides by propensities, so none may be 0: the probabilities carry
  an explicit exploration floor. With ``wins_k`` the number of draws arm ``k`` won, it is
  played with probability ``(wins_k + 1/arms) / (samples + 1)``. Each arm keeps at least
  ``1 / (arms * (samples + 1))``, and the floor takes ``1 / (samples + 1)`` in total
  whatever the arm count, so a clear winner still gets at least ``samples / (samples + 1)``
  of the plays, with 256 arms as with 2.

  The probabilities of a context are cached and recomputed once the observations since the
  last refresh reach ``max_staleness`` times the observations at that refresh (and at
  least one), which is batched Thompson sampling: cheap per decision, and still exact
  about its propensity. A reset of the context (:meth:`ArmTable.reset_context`) bumps
  the row's epoch, which also forces a refresh.
* :class:`UCB1` (Auer, Cesa-Bianchi and Fischer, 2002) plays an unplayed arm first, then
  the arm with the highest ``mean + exploration * sqrt(2 ln N / n)`` on rewards scaled
  to [0, 1]. Ties are broken uniformly at random and the propensity says so.
* :class:`EpsilonGreedy`, :class:`Greedy` and :class:`Softmax` are the action-value
  methods of Sutton and Barto, *Reinforcement Learning: An Introduction* (2nd ed., 2018),
  chapter 2: sample-average means, explored uniformly with probability epsilon, or
  played with Boltzmann (softmax) probabilities.

:data:`RULES` maps each rule's configuration name to its class.

Example:

>>> from syntra_core.bandits import ArmTable, BetaThompson, EpsilonGreedy
>>> table = ArmTable(n_arms=3)
>>> rule = BetaThompson(table)
>>> arm, propensity = rule.select("support", seed=7, sequence=0)
>>> 0 <= arm < 3 and 0.0 < propensity <= 1.0
True
>>> table.update("support", arm, 1.0)
>>> int(table.pulls("support").sum())
1
>>> table.update("billing", 0, 1.0)
>>> greedy = EpsilonGreedy(table, epsilon=0.3)
>>> greedy.distribution("billing", seed=7, sequence=1).round(3).tolist()  # unplayed arms first
[0.1, 0.45, 0.45]
"""

from cpython.mem cimport PyMem_Realloc, PyMem_Free
from libc.math cimport isfinite, exp, log, sqrt, INFINITY
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset

from syntra_core.rng cimport Stream, stream_init, next_double, next_below, beta, std_normal

import operator

import numpy as np

MAX_ARMS = 256
DEFAULT_SAMPLES = 128  # posterior draws behind each Thompson probability estimate

cdef enum:
    ARM_CAPACITY = 256  # MAX_ARMS, as a C constant for per-decision stack buffers


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


cdef int pick_among_best(const double* scores, int n, double best, int ties, Stream* st) noexcept nogil:
    """Uniformly one of the ``ties`` arms whose score is ``best``: one bounded draw, none
    when a single arm is best."""
    cdef int k
    cdef int pick = <int>next_below(st, <uint64_t>ties) if ties > 1 else 0
    for k in range(n):
        if scores[k] == best:
            if pick == 0:
                return k
            pick -= 1
    return 0


cdef int checked_arm(object arm, int n_arms) except -1:
    """``arm`` as an index in ``0..n_arms-1``: TypeError for a non-integer (bools too),
    ValueError out of range. Shared by every module that takes arms from Python."""
    if type(arm) is int and 0 <= arm < n_arms:  # the common case, cheaply
        return arm
    # operator.index refuses floats, so 1.5 is never truncated to arm 1; a bool is a
    # Python int, but as an arm it is a bug in the caller.
    if isinstance(arm, (bool, np.bool_)):
        raise TypeError(f"arm must be an integer, got {arm!r}")
    try:
        index = operator.index(arm)
    except TypeError:
        raise TypeError(f"arm must be an integer, got {type(arm).__name__} {arm!r}") from None
    if not 0 <= index < n_arms:
        raise ValueError(f"arm {index} out of range 0..{n_arms - 1}")
    return index


cdef int _draw_arm(const double* probs, int n, Stream* st, double* propensity) noexcept nogil:
    """Draw an arm from ``probs`` (summing to 1) by inversion; report its probability.

    An arm of probability 0 is never drawn: the cumulative sum does not move across it,
    and if rounding leaves the uniform draw above the total, the last arm with mass wins.
    """
    cdef double u = next_double(st)
    cdef double cumulative = 0.0
    cdef int k, last = 0
    for k in range(n):
        if probs[k] > 0.0:
            last = k
            cumulative += probs[k]
            if u < cumulative:
                propensity[0] = probs[k]
                return k
    propensity[0] = probs[last]
    return last


cdef double _checked(str name, double value, double low, double high, bint low_open=False) except? -1.0:
    """``value`` if it is finite and in the range, else a ValueError naming the setting."""
    if not isfinite(value) or value > high or value < low or (low_open and value == low):
        bound = "(" if low_open else "["
        raise ValueError(f"{name} must be a finite number in {bound}{low}, {high}], got {value!r}")
    return value


cdef double _number(str name, object value) except? -1.0:
    # A bool is an int to Python, but as a setting it is a caller's mistake.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return <double>value


cdef class ArmTable:
    """Sufficient statistics for ``n_arms`` arms in every context seen so far.

    Rewards must be finite and lie in ``[reward_low, reward_high]``; with ``binary`` they
    must be exactly one of the two ends. Context keys are any hashable value; rows are
    created on first use and never removed, but their statistics can be zeroed
    (:meth:`reset_context`, :meth:`reset_all`). Each reset increments the row's *epoch*,
    so rules that cache results per row know the cache is stale.

    >>> table = ArmTable(2)
    >>> table.update("k", 1, 0.5)
    >>> table.reset_context("k")
    >>> table.pulls("k").tolist(), table.epoch("k")
    ([0, 0], 1)
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
        self.epochs = NULL

    def __dealloc__(self):
        PyMem_Free(self.stats)
        PyMem_Free(self.row_pulls)
        PyMem_Free(self.epochs)

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
        self.epochs[row] = 0
        self.n_rows += 1
        self._rows[key] = row
        self._keys.append(key)
        return row

    cdef int _grow(self, Py_ssize_t capacity) except -1:
        self.stats = <ArmStats*>_resize(self.stats, capacity * self.n_arms * sizeof(ArmStats))
        self.row_pulls = <int64_t*>_resize(self.row_pulls, capacity * sizeof(int64_t))
        self.epochs = <int64_t*>_resize(self.epochs, capacity * sizeof(int64_t))
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

    cdef void reset_row(self, Py_ssize_t row) noexcept nogil:
        memset(self.row_stats(row), 0, self.n_arms * sizeof(ArmStats))
        self.row_pulls[row] = 0
        self.epochs[row] += 1

    def update(self, key, arm, double reward):
        """Record one reward for ``arm`` in context ``key``.

        Raises TypeError if ``arm`` is not an integer (bools included) and ValueError if the
        arm is out of range or the reward is invalid. A refused update changes nothing: it
        does not even create the row of a new context.
        """
        cdef int index = checked_arm(arm, self.n_arms)
        check_update(_reward_status(self, reward), self, index, reward)
        cdef Py_ssize_t row = self.row_for(key)
        check_update(self.update_c(row, index, reward), self, index, reward)

    def reset_context(self, key):
        """Forget everything observed in context ``key``; KeyError if it was never seen.

        The row and its key stay; its epoch goes up by one, so cached play probabilities
        of that context are recomputed at the next decision.
        """
        cdef Py_ssize_t row = self.find_row(key)
        if row < 0:
            raise KeyError(key)
        self.reset_row(row)

    def reset_all(self):
        """Forget everything observed in every context (rows and keys stay)."""
        cdef Py_ssize_t row
        for row in range(self.n_rows):
            self.reset_row(row)

    def epoch(self, key):
        """How many times context ``key`` has been reset; KeyError if it was never seen."""
        cdef Py_ssize_t row = self.find_row(key)
        if row < 0:
            raise KeyError(key)
        return self.epochs[row]

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
            "epochs": (<char*>self.epochs)[:self.n_rows * sizeof(int64_t)],
        }

    def import_state(self, state):
        """Load :meth:`export_state` output into this empty table.

        Raises ValueError, and changes nothing, if the state does not fit or is not
        consistent (negative counts, row totals that are not the sum of their arms,
        non-finite sums). States written before epochs existed load with epochs 0.
        """
        if self.n_rows:
            raise ValueError("import_state needs an empty table")
        contexts = list(state["contexts"])
        cdef bytes stats = bytes(state["stats"])
        cdef bytes row_pulls = bytes(state["row_pulls"])
        cdef Py_ssize_t rows = len(contexts)
        cdef bytes epochs = bytes(state["epochs"]) if "epochs" in state else bytes(rows * sizeof(int64_t))
        if len(set(contexts)) != rows or not all(type(k) is str for k in contexts):
            raise ValueError("table state: context keys must be distinct strings")
        if (len(stats) != rows * self.n_arms * sizeof(ArmStats) or len(row_pulls) != rows * sizeof(int64_t)
                or len(epochs) != rows * sizeof(int64_t)):
            raise ValueError(f"table state: arrays do not match {rows} contexts x {self.n_arms} arms")
        # Bytes objects keep their data 8-byte aligned, so the arrays can be read in place.
        cdef const ArmStats* s = <const ArmStats*><const char*>stats
        cdef const int64_t* totals = <const int64_t*><const char*>row_pulls
        cdef const int64_t* resets = <const int64_t*><const char*>epochs
        cdef Py_ssize_t row, i
        cdef int64_t total
        for row in range(rows):
            total = 0
            for i in range(row * self.n_arms, (row + 1) * self.n_arms):
                if (s[i].pulls < 0 or not isfinite(s[i].reward_sum) or not isfinite(s[i].reward_sq)
                        or s[i].reward_sq < 0.0):
                    raise ValueError(f"table state: context {contexts[row]!r} has invalid statistics")
                total += s[i].pulls
            if total != totals[row]:
                raise ValueError(f"table state: context {contexts[row]!r} has {totals[row]} pulls, "
                                 f"its arms {total}")
            if resets[row] < 0:
                raise ValueError(f"table state: context {contexts[row]!r} has a negative epoch")
        if rows:
            self._grow(rows)
            memcpy(self.stats, <const char*>stats, len(stats))
            memcpy(self.row_pulls, <const char*>row_pulls, len(row_pulls))
            memcpy(self.epochs, <const char*>epochs, len(epochs))
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
    """A decision rule over an :class:`ArmTable`: the base rule plays uniformly at random.

    Subclasses implement ``distribution_c``, which writes each arm's play probability for
    a context row; ``select_c`` draws the arm from exactly those probabilities and reports
    the drawn arm's one as the propensity. A subclass may override ``select_c`` with a
    cheaper way of drawing from the same distribution.
    """

    def __cinit__(self, ArmTable table not None, *args, **kwargs):
        self.table = table
        self.cache_rows = 0

    cdef int prepare(self, Py_ssize_t row) except -1:
        """Make per-row caches cover ``row``. Called with the GIL before ``select_c``."""
        return 0

    cdef void distribution_c(self, Py_ssize_t row, Stream* st, double* out) noexcept nogil:
        cdef int n = self.table.n_arms
        cdef int k
        for k in range(n):
            out[k] = 1.0 / n

    cdef int select_c(self, Py_ssize_t row, Stream* st, double* propensity) noexcept nogil:
        cdef double probs[ARM_CAPACITY]
        self.distribution_c(row, st, probs)
        return _draw_arm(probs, self.table.n_arms, st, propensity)

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

    def distribution(self, key, uint64_t seed, uint64_t sequence):
        """The play probability of every arm in context ``key`` (float64 array, sums to 1).

        ``select(key, seed, sequence)`` on the same state plays arm ``k`` with probability
        ``distribution(key, seed, sequence)[k]``. Rules with a cache (Thompson) may refresh
        it here, with the stream of ``(seed, sequence)``, exactly as ``select`` would.
        """
        out = np.empty(self.table.n_arms, dtype=np.float64)
        self.distribution_into(key, seed, sequence, out)
        return out

    def distribution_into(self, key, uint64_t seed, uint64_t sequence, double[::1] out not None):
        """:meth:`distribution` written into ``out`` (float64, one entry per arm), allocating nothing."""
        if out.shape[0] != self.table.n_arms:
            raise ValueError(f"out must have {self.table.n_arms} entries (one per arm), got {out.shape[0]}")
        cdef Py_ssize_t row = self.table.row_for(key)
        self.prepare(row)
        cdef Stream st
        stream_init(&st, seed, sequence)
        self.distribution_c(row, &st, &out[0])


cdef int _check_sampling(int samples, double max_staleness) except -1:
    if not 1 <= samples <= 1_000_000:
        raise ValueError(f"samples must be in 1..1000000, got {samples}")
    if not isfinite(max_staleness) or not 0.0 <= max_staleness <= 1.0:
        raise ValueError(f"max_staleness must be in [0, 1], got {max_staleness!r}")
    return 0


cdef class PosteriorSampling(Rule):
    """Thompson sampling with exact, cached propensities (see the module docs).

    The shared machinery of :class:`BetaThompson` and :class:`GaussianThompson`: the
    Monte-Carlo estimate of each arm's probability of being best, its exploration floor,
    the per-row cache and its staleness rule. A subclass says what the posterior of each
    arm's mean is (``posterior``) and how to draw from it (``draw_mean``). Not usable on
    its own.
    """

    def __cinit__(self, ArmTable table not None, *args, **kwargs):
        if type(self) is PosteriorSampling:
            raise TypeError("PosteriorSampling is abstract: use BetaThompson or GaussianThompson")
        self.samples = DEFAULT_SAMPLES
        self.max_staleness = 1.0 / 32
        self.win_prob = NULL
        self.refreshed_at = NULL
        self.refreshed_epoch = NULL

    def __dealloc__(self):
        PyMem_Free(self.win_prob)
        PyMem_Free(self.refreshed_at)
        PyMem_Free(self.refreshed_epoch)

    cdef int prepare(self, Py_ssize_t row) except -1:
        if row < self.cache_rows:
            return 0
        cdef Py_ssize_t rows = max(8, 2 * self.cache_rows, row + 1)
        cdef int n = self.table.n_arms
        self.win_prob = <double*>_resize(self.win_prob, rows * n * sizeof(double))
        self.refreshed_at = <int64_t*>_resize(self.refreshed_at, rows * sizeof(int64_t))
        self.refreshed_epoch = <int64_t*>_resize(self.refreshed_epoch, rows * sizeof(int64_t))
        # Zeroed, so that an exported state never carries uninitialised memory.
        memset(self.win_prob + self.cache_rows * n, 0, (rows - self.cache_rows) * n * sizeof(double))
        cdef Py_ssize_t r
        for r in range(self.cache_rows, rows):
            self.refreshed_at[r] = -1
            self.refreshed_epoch[r] = 0
        self.cache_rows = rows
        return 0

    cdef void posterior(self, Py_ssize_t row, double* first, double* second) noexcept nogil:
        """Each arm's posterior parameters, in the form ``draw_mean`` takes them."""
        pass

    cdef double draw_mean(self, Stream* st, double first, double second) noexcept nogil:
        """One draw of an arm's mean from its posterior."""
        return 0.0

    cdef void refresh(self, Py_ssize_t row, Stream* st) noexcept nogil:
        cdef int n = self.table.n_arms
        cdef double* probs = self.win_prob + row * n
        cdef double first[ARM_CAPACITY]
        cdef double second[ARM_CAPACITY]
        cdef double best_draw, draw
        cdef int k, m, best
        self.posterior(row, first, second)
        for k in range(n):
            probs[k] = 0.0
        for m in range(self.samples):
            best = 0
            best_draw = -INFINITY
            for k in range(n):
                draw = self.draw_mean(st, first[k], second[k])
                if draw > best_draw:
                    best_draw = draw
                    best = k
            probs[best] += 1.0
        # Exploration floor (see the module docs): total mass 1/(samples+1) whatever n is.
        for k in range(n):
            probs[k] = (probs[k] + 1.0 / n) / (self.samples + 1.0)
        self.refreshed_at[row] = self.table.row_pulls[row]
        self.refreshed_epoch[row] = self.table.epochs[row]

    cdef void refresh_if_due(self, Py_ssize_t row, Stream* st) noexcept nogil:
        cdef int64_t seen = self.table.row_pulls[row]
        cdef int64_t last = self.refreshed_at[row]
        cdef int64_t due
        if last < 0 or self.refreshed_epoch[row] != self.table.epochs[row]:
            self.refresh(row, st)
        elif seen > last:
            due = <int64_t>(last * self.max_staleness)
            if seen - last >= (due if due > 1 else 1):
                self.refresh(row, st)

    cdef void distribution_c(self, Py_ssize_t row, Stream* st, double* out) noexcept nogil:
        self.refresh_if_due(row, st)
        memcpy(out, self.win_prob + row * self.table.n_arms, self.table.n_arms * sizeof(double))

    cdef int select_c(self, Py_ssize_t row, Stream* st, double* propensity) noexcept nogil:
        # Same draw as Rule.select_c, straight from the cache instead of a copy of it.
        self.refresh_if_due(row, st)
        return _draw_arm(self.win_prob + row * self.table.n_arms, self.table.n_arms, st, propensity)

    def export_state(self):
        """The cached probabilities and when (pulls, epoch) each row's were computed."""
        cdef Py_ssize_t rows = min(self.cache_rows, self.table.n_rows)
        return {
            "win_prob": (<char*>self.win_prob)[:rows * self.table.n_arms * sizeof(double)],
            "refreshed_at": (<char*>self.refreshed_at)[:rows * sizeof(int64_t)],
            "refreshed_epoch": (<char*>self.refreshed_epoch)[:rows * sizeof(int64_t)],
        }

    def import_state(self, state):
        """Load :meth:`export_state` output; the table must already hold its state.

        Raises ValueError, and changes nothing, if the cache does not fit the table. States
        written before epochs existed load with epochs 0.
        """
        cdef bytes probs = bytes(state["win_prob"])
        cdef bytes at = bytes(state["refreshed_at"])
        cdef Py_ssize_t rows = len(at) // sizeof(int64_t)
        cdef bytes epochs = (bytes(state["refreshed_epoch"]) if "refreshed_epoch" in state
                             else bytes(rows * sizeof(int64_t)))
        cdef int n = self.table.n_arms
        if (len(at) != rows * sizeof(int64_t) or rows > self.table.n_rows
                or len(epochs) != len(at) or len(probs) != rows * n * sizeof(double)):
            raise ValueError("thompson state does not match the table")
        cdef const double* p = <const double*><const char*>probs
        cdef const int64_t* when = <const int64_t*><const char*>at
        cdef const int64_t* epoch = <const int64_t*><const char*>epochs
        cdef Py_ssize_t row
        cdef int k
        cdef double total
        for row in range(rows):
            if not (-1 <= when[row] <= self.table.row_pulls[row]
                    and 0 <= epoch[row] <= self.table.epochs[row]):
                raise ValueError(f"thompson state: row {row} was refreshed after the table's state")
            if when[row] < 0:
                continue
            total = 0.0
            for k in range(n):
                if not (isfinite(p[row * n + k]) and p[row * n + k] > 0.0):
                    raise ValueError(f"thompson state: row {row} has an invalid probability")
                total += p[row * n + k]
            if abs(total - 1.0) > 1e-9:
                raise ValueError(f"thompson state: the probabilities of row {row} sum to {total}")
        if rows:
            self.prepare(rows - 1)
            memcpy(self.win_prob, <const char*>probs, len(probs))
            memcpy(self.refreshed_at, <const char*>at, len(at))
            memcpy(self.refreshed_epoch, <const char*>epochs, len(epochs))

    cdef Py_ssize_t cached_row(self, object key) except -2:
        cdef Py_ssize_t row = self.table.find_row(key)
        if (row < 0 or row >= self.cache_rows or self.refreshed_at[row] < 0
                or self.refreshed_epoch[row] != self.table.epochs[row]):
            return -1
        return row

    def probabilities(self, key):
        """The cached play probabilities of context ``key``, or None if there are none yet.

        None before the context's first decision and after a reset of it, until its next
        decision recomputes them.
        """
        cdef Py_ssize_t row = self.cached_row(key)
        if row < 0:
            return None
        cdef int n = self.table.n_arms
        return np.array([self.win_prob[row * n + k] for k in range(n)])

    def last_refresh(self, key):
        """Observations of context ``key`` when its probabilities were last computed, or None."""
        cdef Py_ssize_t row = self.cached_row(key)
        if row < 0:
            return None
        return self.refreshed_at[row]


cdef class BetaThompson(PosteriorSampling):
    """Beta-Bernoulli Thompson sampling with exact propensities (see the module docs).

    Thompson (1933); for the Beta-Bernoulli case see Agrawal and Goyal (2012) and Russo et
    al., *A Tutorial on Thompson Sampling* (2018). Arm ``k``'s posterior is
    ``Beta(prior_a + successes_k, prior_b + failures_k)``, where a reward ``r`` counts as
    ``(r - low) / (high - low)`` of a success. ``samples`` is the number of posterior
    draws behind each probability estimate; ``max_staleness`` bounds how far the data may
    move before the probabilities are recomputed (0 recomputes after every observation).
    """

    def __cinit__(self, ArmTable table not None, double prior_a=1.0, double prior_b=1.0,
                  int samples=DEFAULT_SAMPLES, double max_staleness=1.0 / 32):
        for name, value in (("prior_a", prior_a), ("prior_b", prior_b)):
            if not isfinite(value) or value <= 0.0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        _check_sampling(samples, max_staleness)
        self.prior_a = prior_a
        self.prior_b = prior_b
        self.samples = samples
        self.max_staleness = max_staleness

    cdef void posterior(self, Py_ssize_t row, double* first, double* second) noexcept nogil:
        cdef ArmStats* s = self.table.row_stats(row)
        cdef double width = self.table.reward_high - self.table.reward_low
        cdef double successes
        cdef int k
        for k in range(self.table.n_arms):
            successes = (s[k].reward_sum - s[k].pulls * self.table.reward_low) / width
            first[k] = self.prior_a + successes
            second[k] = self.prior_b + (s[k].pulls - successes)

    cdef double draw_mean(self, Stream* st, double first, double second) noexcept nogil:
        return beta(st, first, second)


cdef class GaussianThompson(PosteriorSampling):
    """Gaussian Thompson sampling for continuous rewards (Agrawal and Goyal, 2013).

    Agrawal and Goyal, "Further optimal regret bounds for Thompson sampling", AISTATS 2013,
    sample each arm's mean from a Normal posterior centred on its empirical mean. Here,
    with ``n`` rewards of sum ``S`` for the arm, ``m = prior_mean`` (default: the middle
    of the table's reward range), ``w = prior_strength`` and ``v0 = (width / 2) ** 2``
    (the largest variance a reward in the range can have)::

        mean      = (w * m + S) / (w + n)
        s2        = (w * v0 + SS) / (w + n)      SS = sum of squared deviations from S / n
        posterior = Normal(mean, s2 / (w + n))

    So the prior counts as ``w`` pseudo-observations at ``m`` with variance ``v0``, and a
    single observation never gives a variance of 0. Play probabilities, their exploration
    floor and their cache work as for :class:`BetaThompson` (see the module docs).

    >>> table = ArmTable(2, reward_low=0.0, reward_high=10.0)
    >>> for reward in (7.0, 8.0, 9.0):
    ...     table.update("k", 1, reward)
    >>> table.update("k", 0, 1.0)
    >>> rule = GaussianThompson(table)
    >>> probabilities = rule.distribution("k", seed=1, sequence=0)
    >>> bool(probabilities[1] > 0.9), float(probabilities.sum())
    (True, 1.0)
    """

    def __cinit__(self, ArmTable table not None, prior_mean=None, double prior_strength=1.0,
                  int samples=DEFAULT_SAMPLES, double max_staleness=1.0 / 32):
        cdef double low = table.reward_low, high = table.reward_high
        cdef double mean = 0.5 * (low + high) if prior_mean is None else _number("prior_mean", prior_mean)
        _checked("prior_mean", mean, low, high)
        _checked("prior_strength", prior_strength, 0.0, 1e9, low_open=True)
        _check_sampling(samples, max_staleness)
        self.prior_mean = mean
        self.prior_strength = prior_strength
        self.samples = samples
        self.max_staleness = max_staleness

    cdef void posterior(self, Py_ssize_t row, double* first, double* second) noexcept nogil:
        cdef ArmStats* s = self.table.row_stats(row)
        cdef double half_width = 0.5 * (self.table.reward_high - self.table.reward_low)
        cdef double w = self.prior_strength
        cdef double weight, deviations, variance
        cdef int k
        for k in range(self.table.n_arms):
            weight = w + s[k].pulls
            deviations = 0.0
            if s[k].pulls > 0:
                deviations = s[k].reward_sq - s[k].reward_sum * s[k].reward_sum / s[k].pulls
                if deviations < 0.0:  # rounding, when all rewards are (nearly) equal
                    deviations = 0.0
            variance = (w * half_width * half_width + deviations) / weight
            first[k] = (w * self.prior_mean + s[k].reward_sum) / weight
            second[k] = sqrt(variance / weight)

    cdef double draw_mean(self, Stream* st, double first, double second) noexcept nogil:
        return first + second * std_normal(st)



cdef inline double _ucb_score(const ArmStats* arm, double low, double width, double log_total,
                              double exploration) noexcept nogil:
    """Mean reward scaled to [0, 1] plus the confidence bonus; +inf for an unplayed arm."""
    if arm.pulls == 0:
        return INFINITY
    return ((arm.reward_sum / arm.pulls) - low) / width + exploration * sqrt(2.0 * log_total / arm.pulls)


cdef class UCB1(Rule):
    """UCB1 (Auer, Cesa-Bianchi and Fischer, "Finite-time analysis of the multiarmed bandit
    problem", Machine Learning 47, 2002) on rewards scaled to [0, 1].

    Each unplayed arm first, then the arm with the highest ``mean + exploration *
    sqrt(2 ln N / n)``; ``exploration`` scales the confidence bonus (1 is the paper's).
    Tied arms are played uniformly, so the distribution is ``1 / ties`` on each of them.
    """

    def __cinit__(self, ArmTable table not None, double exploration=1.0):
        if not isfinite(exploration) or exploration < 0.0:
            raise ValueError(f"exploration must be a finite number >= 0, got {exploration!r}")
        self.exploration = exploration

    cdef int scores(self, Py_ssize_t row, double* scores, double* best_score) noexcept nogil:
        """Fill every arm's index; return how many arms share the best one."""
        cdef int n = self.table.n_arms
        cdef ArmStats* s = self.table.row_stats(row)
        cdef double low = self.table.reward_low
        cdef double width = self.table.reward_high - low
        cdef double log_total = log(<double>self.table.row_pulls[row]) if self.table.row_pulls[row] > 0 else 0.0
        cdef int k, ties = 0
        best_score[0] = -INFINITY
        for k in range(n):
            scores[k] = _ucb_score(&s[k], low, width, log_total, self.exploration)
            if scores[k] > best_score[0]:
                best_score[0] = scores[k]
                ties = 1
            elif scores[k] == best_score[0]:
                ties += 1
        return ties

    cdef void distribution_c(self, Py_ssize_t row, Stream* st, double* out) noexcept nogil:
        cdef double scores[ARM_CAPACITY]
        cdef double best_score
        cdef int ties = self.scores(row, scores, &best_score)
        cdef int k
        for k in range(self.table.n_arms):
            out[k] = 1.0 / ties if scores[k] == best_score else 0.0

    cdef int select_c(self, Py_ssize_t row, Stream* st, double* propensity) noexcept nogil:
        # Uniform over the tied arms, as distribution_c says, with one bounded integer draw.
        cdef double scores[ARM_CAPACITY]
        cdef double best_score
        cdef int ties = self.scores(row, scores, &best_score)
        propensity[0] = 1.0 / ties
        return pick_among_best(scores, self.table.n_arms, best_score, ties, st)


cdef class EpsilonGreedy(Rule):
    """Epsilon-greedy action selection (Sutton and Barto, *Reinforcement Learning: An
    Introduction*, 2nd ed. 2018, section 2.2 and 2.4) on sample-average means.

    With ``N`` the context's observations so far, ``eps = epsilon / (1 + decay * N)``
    (``decay = 0`` keeps it constant). The greedy arms are those with the highest mean
    reward, an unplayed arm counting as +inf (so every arm is tried first, as with
    optimistic initial values); with ``ties`` of them, arm ``k`` is played with
    probability ``eps / arms + (1 - eps) / ties`` if it is greedy, ``eps / arms`` if not.

    >>> table = ArmTable(3)
    >>> for arm, reward in ((0, 0.2), (1, 0.9), (2, 0.9)):
    ...     table.update("k", arm, reward)
    >>> EpsilonGreedy(table, epsilon=0.3).distribution("k", 1, 0).round(3).tolist()
    [0.1, 0.45, 0.45]
    """

    def __cinit__(self, ArmTable table not None, double epsilon=0.1, double decay=0.0):
        self.epsilon = _checked("epsilon", epsilon, 0.0, 1.0)
        self.decay = _checked("decay", decay, 0.0, 1e9)

    cdef void distribution_c(self, Py_ssize_t row, Stream* st, double* out) noexcept nogil:
        cdef int n = self.table.n_arms
        cdef ArmStats* s = self.table.row_stats(row)
        cdef double eps = self.epsilon / (1.0 + self.decay * <double>self.table.row_pulls[row])
        cdef double means[ARM_CAPACITY]
        cdef double best = -INFINITY
        cdef int k, ties = 0
        for k in range(n):
            # The argmax of raw means is the argmax of scaled ones, with one rounding less.
            means[k] = INFINITY if s[k].pulls == 0 else s[k].reward_sum / s[k].pulls
            if means[k] > best:
                best = means[k]
                ties = 1
            elif means[k] == best:
                ties += 1
        cdef double explore = eps / n
        cdef double exploit = (1.0 - eps) / ties
        for k in range(n):
            out[k] = explore + exploit if means[k] == best else explore


cdef class Greedy(EpsilonGreedy):
    """Pure exploitation: :class:`EpsilonGreedy` with ``epsilon = 0`` (Sutton and Barto,
    section 2.2). Unplayed arms first, then the best mean; ties are played uniformly.
    """

    def __cinit__(self, ArmTable table not None):
        self.epsilon = 0.0
        self.decay = 0.0


cdef class Softmax(Rule):
    """Softmax (Boltzmann) action selection (Sutton and Barto, *Reinforcement Learning: An
    Introduction*, 2nd ed. 2018, section 2.8 and the first edition's section 2.3).

    Arm ``k`` is played with probability ``exp(q_k / temperature) / sum_j exp(q_j /
    temperature)``, where ``q_k`` is its mean reward scaled to [0, 1] and an unplayed arm
    has the optimistic ``q = 1``. The largest ``q`` is subtracted before exponentiating,
    so no temperature overflows. Low temperatures approach greedy play, high ones uniform.

    >>> table = ArmTable(2)
    >>> table.update("k", 0, 0.0)
    >>> table.update("k", 1, 1.0)
    >>> Softmax(table, temperature=0.5).distribution("k", 1, 0).round(4).tolist()
    [0.1192, 0.8808]
    """

    def __cinit__(self, ArmTable table not None, double temperature=0.1):
        self.temperature = _checked("temperature", temperature, 0.0, 1e9, low_open=True)

    cdef void distribution_c(self, Py_ssize_t row, Stream* st, double* out) noexcept nogil:
        cdef int n = self.table.n_arms
        cdef ArmStats* s = self.table.row_stats(row)
        cdef double low = self.table.reward_low
        cdef double width = self.table.reward_high - low
        cdef double best = -INFINITY
        cdef double total = 0.0
        cdef int k
        for k in range(n):
            out[k] = 1.0 if s[k].pulls == 0 else (s[k].reward_sum / s[k].pulls - low) / width
            if out[k] > best:
                best = out[k]
        for k in range(n):
            out[k] = exp((out[k] - best) / self.temperature)
            total += out[k]
        for k in range(n):
            out[k] /= total


# Each rule's name in configurations, and its class.
RULES = {
    "thompson": BetaThompson,
    "gaussian_thompson": GaussianThompson,
    "ucb1": UCB1,
    "epsilon_greedy": EpsilonGreedy,
    "softmax": Softmax,
    "greedy": Greedy,
}


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
