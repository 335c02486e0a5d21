"""Refusal: decline a decision the service cannot stand behind.

A capsule may opt in to refusing a decision instead of serving it. Three detectors feed the
choice, and :class:`RefusalPolicy` combines them.

* :class:`ConformalInterval` gives a split-conformal prediction interval for the reward of
  the option about to be served (Vovk, Gammerman and Shafer, *Algorithmic Learning in a
  Random World*, 2005; Lei, G'Sell, Rinaldo, Tibshirani and Wasserman, "Distribution-free
  predictive inference for regression", JASA 2018). The calibration scores are the
  absolute residuals ``|r - prediction|`` of the last ``window`` served decisions. With
  ``n`` residuals held, the interval is ``prediction +- q`` where ``q`` is the
  ``ceil((n + 1) * coverage)``-th smallest residual (``+inf`` when that rank exceeds
  ``n``). Guarantee (Lei et al. 2018, Theorem 2.2): if the ``n`` calibration pairs and the
  new one are *exchangeable* (for instance i.i.d.: a stationary workload, and a predictor
  that does not depend on these particular pairs), the new reward falls inside the
  interval with probability at least ``coverage``, in finite samples and whatever the
  noise distribution; without ties among the residuals the probability is also at most
  ``coverage + 1 / (n + 1)``. The guarantee is marginal (averaged over contexts), and a
  learner that keeps changing or a drifting workload breaks exchangeability: the sliding
  window then tracks the recent residuals but promises nothing exact.

* :class:`MahalanobisOOD` keeps the running mean and covariance of the context vectors
  (Welford, *Technometrics* 4(3), 1962, in the pairwise form of Chan, Golub and LeVeque,
  "Algorithms for computing the sample variance", 1983) and scores a vector by its
  Mahalanobis distance ``sqrt((x - mu)^T (S + ridge I)^-1 (x - mu))`` (Mahalanobis, 1936),
  where ``S`` is the sample covariance. The ridge keeps the matrix invertible when a
  feature is constant (a bias column) or when there are fewer vectors than dimensions.

* :class:`KeyNovelty` counts discrete context keys: an unseen key scores 1.0, a rare one
  0.5, a familiar one 0.

Which contexts the novelty detectors learn from: every decision's context, refused or not
(:meth:`RefusalPolicy.observe_context`), not only the contexts that came back with
feedback. Out-of-distribution is a property of the input stream, and a refused decision
never gets feedback: learning only from served decisions would keep a refused region
novel forever, and a new key could never become known.

Example:

>>> policy = RefusalPolicy({"enabled": True, "min_calibration": 20, "max_interval_width": 1.5})
>>> for step in range(40):
...     policy.observe_context(key="checkout")
...     policy.observe(prediction=0.5, reward=0.5 + (step % 5) * 0.125)
>>> verdict = policy.assess(0.5, key="checkout")
>>> verdict.refused, verdict.calibration_size
(False, 40)
>>> verdict.to_dict()["intervalWidth"]   # rank ceil(41 * 0.9) = 37: residual 0.5
1.0
>>> policy.assess(0.5, key="never-seen").reason
'ood'
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from dataclasses import dataclass
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from syntra.errors import InvalidConfig, SyntraError

#: Largest magnitude accepted for a prediction, reward or residual.
MAX_MAGNITUDE = 1e15
#: Largest Euclidean norm accepted for a context vector.
MAX_VECTOR_NORM = 1e15
_MAX_SQUARED_NORM = MAX_VECTOR_NORM * MAX_VECTOR_NORM
MAX_WINDOW = 1_000_000
MAX_DIM = 1024
MAX_REFRESH_EVERY = 4096

REASONS = ("ood", "insufficient_calibration", "interval_too_wide")

DEFAULT_CONFIG = {
    "enabled": False,
    "coverage": 0.9,
    "window": 500,
    "min_calibration": 50,
    "max_interval_width": None,
    "ood_threshold": 3.0,
    "refuse_uncalibrated": False,
    "ood_min_samples": 30,
    "rare_below": 5,
}


class RefusalConfigError(InvalidConfig):
    """A refusal setting (or a detector's constructor argument) is invalid."""


class RefusalInputError(SyntraError, ValueError):
    """A prediction, reward, residual, context vector or key is not acceptable."""


class RefusalStateError(SyntraError, ValueError):
    """An exported refusal state is malformed or does not fit this configuration."""


# ---------------------------------------------------------------------------------------
# validation helpers


def _config_number(value, field, low, high, low_open, high_open):
    if type(value) is bool or not isinstance(value, (int, float)):
        raise RefusalConfigError(f"{field} must be a number, got {value!r}")
    value = float(value)
    ok = (
        math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise RefusalConfigError(
            f"{field} must be in {left}{_fmt(low)}, {_fmt(high)}{right}, got {value!r}"
        )
    return value


def _config_int(value, field, low, high):
    if type(value) is bool or not isinstance(value, int):
        raise RefusalConfigError(f"{field} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise RefusalConfigError(f"{field} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _config_bool(value, field):
    if type(value) is not bool:
        raise RefusalConfigError(f"{field} must be true or false, got {value!r}")
    return value


def _fmt(bound):
    if bound == math.inf:
        return "inf"
    return repr(int(bound)) if float(bound).is_integer() else repr(bound)


def _scalar(value, field):
    """``value`` as a float, refusing NaN, infinities and magnitudes above MAX_MAGNITUDE."""
    if type(value) is not float:
        if type(value) is bool or not isinstance(value, (int, float, np.integer, np.floating)):
            raise RefusalInputError(f"{field} must be a number, got {value!r}")
        value = float(value)
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:  # False for NaN
        raise RefusalInputError(
            f"{field} must be a finite number of magnitude <= {MAX_MAGNITUDE:g}, got {value!r}"
        )
    return value


def _vector(x, dim):
    """``x`` as a float64 vector of ``dim`` entries (any length if ``dim`` is None)."""
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RefusalInputError(f"context vector must be numbers, got {x!r}") from exc
    if array.ndim != 1 or (dim is not None and array.shape[0] != dim):
        want = f"({dim},)" if dim is not None else "one-dimensional"
        raise RefusalInputError(f"context vector must have shape {want}, got {array.shape}")
    if array.shape[0] == 0 or array.shape[0] > MAX_DIM:
        raise RefusalInputError(f"context vector must have 1..{MAX_DIM} entries, got {array.shape[0]}")
    # One dot product checks every entry at once: NaN or inf anywhere makes it non-finite.
    if not float(array.dot(array)) <= _MAX_SQUARED_NORM:
        raise RefusalInputError(
            f"context vector must be finite with norm <= {MAX_VECTOR_NORM:g}, got {x!r}"
        )
    return array


def _key(key):
    if type(key) is not str:
        raise RefusalInputError(f"context key must be a string, got {key!r}")
    return key


def _exact_ratio(coverage):
    """The coverage as the decimal the caller wrote (0.7 is 7/10, not 0.69999...)."""
    fraction = Fraction(repr(coverage))
    return fraction.numerator, fraction.denominator


def _min_useful_size(numerator, denominator):
    """Smallest n whose conformal rank ceil((n + 1) * coverage) is at most n."""
    # ceil((n+1)c) <= n  <=>  (n+1)c <= n  <=>  n >= c / (1 - c)
    return -(-numerator // (denominator - numerator))


def _state_bytes(state, field, item_count):
    value = state.get(field) if isinstance(state, Mapping) else None
    if not isinstance(value, (bytes, bytearray)):
        raise RefusalStateError(f"state field {field!r} must be bytes, got {type(value).__name__}")
    if item_count is not None and len(value) != 8 * item_count:
        raise RefusalStateError(
            f"state field {field!r} must hold {item_count} float64 values, got {len(value)} bytes"
        )
    if len(value) % 8:
        raise RefusalStateError(f"state field {field!r} is not a whole number of float64 values")
    array = np.frombuffer(bytes(value), dtype="<f8").astype(np.float64)
    if not np.isfinite(array).all():
        raise RefusalStateError(f"state field {field!r} holds non-finite values")
    return array


def _state_int(state, field, low, high):
    value = state.get(field) if isinstance(state, Mapping) else None
    if type(value) is not int or not low <= value <= high:
        raise RefusalStateError(f"state field {field!r} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _require_mapping(state, what):
    if not isinstance(state, Mapping):
        raise RefusalStateError(f"{what} state must be a dict, got {type(state).__name__}")


# ---------------------------------------------------------------------------------------
# split-conformal interval


class ConformalInterval:
    """Split-conformal prediction interval over the last ``window`` absolute residuals.

    ``coverage`` is the nominal probability that a fresh reward falls inside the interval
    (see the module docs for when that holds); ``calibrated`` is true once
    ``min_calibration`` residuals are held. ``coverage`` is read as the decimal it was
    written as, so the rank ``ceil((n + 1) * coverage)`` is exact integer arithmetic.

    Residuals are kept twice: in a ring buffer (to know which one leaves the window) and in
    a sorted list, so the quantile is a list index and an update two ``bisect`` moves.

    >>> conformal = ConformalInterval(coverage=0.8, window=4, min_calibration=4)
    >>> for residual in (0.3, 0.1, 0.4, 0.2):
    ...     conformal.add_residual(residual)
    >>> conformal.interval(1.0)          # rank ceil(5 * 0.8) = 4: the largest residual
    (0.6, 1.4, 0.8)
    >>> conformal.add_residual(0.0)      # evicts 0.3
    >>> conformal.quantile
    0.4
    """

    __slots__ = (
        "coverage", "window", "min_calibration",
        "_numerator", "_denominator", "_ring", "_head", "_size", "_sorted",
    )

    def __init__(self, coverage=0.9, window=500, min_calibration=50, *, _prefix=""):
        self.coverage = _config_number(coverage, _prefix + "coverage", 0.0, 1.0, True, True)
        self.window = _config_int(window, _prefix + "window", 1, MAX_WINDOW)
        self.min_calibration = _config_int(min_calibration, _prefix + "min_calibration", 1, MAX_WINDOW)
        self._numerator, self._denominator = _exact_ratio(self.coverage)
        smallest = _min_useful_size(self._numerator, self._denominator)
        if self.window < smallest:
            raise RefusalConfigError(
                f"{_prefix}window must be >= {smallest} for coverage {self.coverage!r}, "
                f"got {self.window} (a smaller window never yields a finite interval)"
            )
        if not smallest <= self.min_calibration <= self.window:
            raise RefusalConfigError(
                f"{_prefix}min_calibration must be in [{smallest}, {_prefix}window={self.window}] "
                f"for coverage {self.coverage!r}, got {self.min_calibration}"
            )
        self._ring = [0.0] * self.window
        self._head = 0
        self._size = 0
        self._sorted = []

    @property
    def size(self):
        """Number of residuals held (at most ``window``)."""
        return self._size

    @property
    def calibrated(self):
        """True once at least ``min_calibration`` residuals are held."""
        return self._size >= self.min_calibration

    def rank(self, n=None):
        """The conformal rank ``ceil((n + 1) * coverage)`` for ``n`` residuals (default: held)."""
        if n is None:
            n = self._size
        return -(-(n + 1) * self._numerator // self._denominator)

    @property
    def quantile(self):
        """The conformal quantile ``q``: the rank-th smallest residual, ``inf`` if rank > n."""
        n = self._size
        rank = -(-(n + 1) * self._numerator // self._denominator)
        return self._sorted[rank - 1] if rank <= n else math.inf

    def interval(self, prediction):
        """``(low, high, width)`` of the interval ``prediction +- q``."""
        prediction = _scalar(prediction, "prediction")
        n = self._size
        rank = -(-(n + 1) * self._numerator // self._denominator)
        q = self._sorted[rank - 1] if rank <= n else math.inf
        return prediction - q, prediction + q, 2.0 * q

    def add_residual(self, residual):
        """Add one calibration score ``|reward - prediction|`` (>= 0); the oldest leaves when full."""
        residual = _scalar(residual, "residual")
        if residual < 0.0:
            raise RefusalInputError(f"residual must be >= 0 (an absolute error), got {residual!r}")
        self._push(residual)

    def observe(self, prediction, reward):
        """Add the residual ``|reward - prediction|`` of a served decision."""
        prediction = _scalar(prediction, "prediction")
        reward = _scalar(reward, "reward")
        self._push(abs(reward - prediction))

    def _push(self, residual):
        head = self._head
        if self._size == self.window:
            stale = self._ring[head]
            del self._sorted[bisect_left(self._sorted, stale)]
        else:
            self._size += 1
        self._ring[head] = residual
        self._head = head + 1 if head + 1 < self.window else 0
        insort(self._sorted, residual)

    def residuals(self):
        """The residuals held, oldest first."""
        if self._size < self.window:
            return self._ring[: self._size]
        return self._ring[self._head:] + self._ring[: self._head]

    def export_state(self):
        """The residuals held, oldest first, as little-endian float64 bytes."""
        return {"residuals": np.asarray(self.residuals(), dtype="<f8").tobytes()}

    def _parse_state(self, state):
        _require_mapping(state, "conformal")
        residuals = _state_bytes(state, "residuals", None)
        if residuals.shape[0] > self.window:
            raise RefusalStateError(
                f"conformal state holds {residuals.shape[0]} residuals, more than window={self.window}"
            )
        if (residuals < 0.0).any() or (residuals > 2 * MAX_MAGNITUDE).any():
            raise RefusalStateError("conformal state holds a residual outside [0, 2e15]")
        return residuals.tolist()

    def _apply_state(self, residuals):
        self._ring = [0.0] * self.window
        self._ring[: len(residuals)] = residuals
        self._size = len(residuals)
        self._head = self._size % self.window
        self._sorted = sorted(residuals)

    def import_state(self, state):
        """Restore :meth:`export_state` output, replacing what is held. Checks before changing."""
        self._apply_state(self._parse_state(state))


# ---------------------------------------------------------------------------------------
# Mahalanobis distance to the running distribution of context vectors


class MahalanobisOOD:
    """Mahalanobis distance of a context vector to the vectors seen so far.

    The statistics (count, mean, co-moment matrix ``M2``; covariance ``M2 / (n - 1)`` as
    ``np.cov``) and the precision matrix ``(S + ridge I)^-1`` are refreshed together every
    ``refresh_every`` vectors, and when the count reaches ``min_samples``. In between, the
    new vectors wait in a preallocated buffer, so an update is one row copy. A refresh
    merges the buffer with Chan, Golub and LeVeque's pairwise formula
    ``M2 = M2_a + M2_b + n_a n_b / n * delta delta^T`` (``delta`` the difference of the
    two means; the buffer's own ``M2_b`` comes from its centred rows), which never
    subtracts large sums, so offsets like 1e9 do not cost precision.

    Why periodic recomputation and not a rank-one (Sherman-Morrison) update of the inverse:
    the ridge is added to ``S = M2 / (n - 1)``, so every vector also rescales the whole
    matrix and adds ``ridge / (n - 1) * I``, which a rank-one formula cannot absorb; chained
    rank-one updates drift numerically; and in numpy an O(d^2) rank-one step per vector
    costs more than the amortised O(d^3) recomputation. The inverse comes from a symmetric
    eigendecomposition with the eigenvalues floored at ``ridge``, so it stays positive
    definite even for badly conditioned data (a constant bias column has variance 0 and
    gets precision ``1 / ridge``, harmless since its deviation is always 0).

    Scores use the statistics of the last refresh, at most ``refresh_every - 1`` vectors
    behind (a relative lag of ``refresh_every / n``); ``refresh_every=1`` is exact. Before
    ``min_samples`` vectors the score is 0 and ``ready`` is False.

    >>> ood = MahalanobisOOD(dim=2, min_samples=4)
    >>> for point in ([0.0, 1.0], [2.0, 1.0], [0.0, 1.0], [2.0, 1.0]):
    ...     ood.update(point)
    >>> ood.ready, ood.mean.tolist()
    (True, [1.0, 1.0])
    >>> round(ood.score([3.0, 1.0]), 4)   # 2 away from the mean, sample std 2/sqrt(3)
    1.7321
    """

    def __init__(self, dim, min_samples=30, ridge=1e-6, refresh_every=32, *, _prefix=""):
        self.dim = _config_int(dim, _prefix + "dim", 1, MAX_DIM)
        self.min_samples = _config_int(min_samples, _prefix + "min_samples", 2, 2**62)
        self.ridge = _config_number(ridge, _prefix + "ridge", 0.0, 1e12, True, False)
        self.refresh_every = _config_int(refresh_every, _prefix + "refresh_every", 1, MAX_REFRESH_EVERY)
        d = self.dim
        self._count = 0           # vectors merged into the statistics below
        self._mean = np.zeros(d)
        self._comoment = np.zeros((d, d))
        self._precision = np.zeros((d, d))
        self._pending = np.empty((self.refresh_every, d))
        self._pending_count = 0   # vectors in the buffer, not merged yet
        # scratch buffers, so a score allocates nothing
        self._delta = np.empty(d)
        self._product = np.empty(d)

    @property
    def count(self):
        """Number of vectors seen."""
        return self._count + self._pending_count

    @property
    def ready(self):
        """True once ``min_samples`` vectors have been seen (scores are 0 before)."""
        return self._count >= self.min_samples

    @property
    def mean(self):
        """The mean of every vector seen (a new array)."""
        return self._merged()[1]

    @property
    def covariance(self):
        """The sample covariance of every vector seen (zeros before two vectors)."""
        count, _, comoment = self._merged()
        if count < 2:
            return np.zeros((self.dim, self.dim))
        return comoment / (count - 1)

    def score(self, x):
        """Mahalanobis distance of ``x`` to the distribution at the last refresh (0.0 before ``ready``)."""
        return self._score_valid(_vector(x, self.dim))

    def update(self, x):
        """Add vector ``x``; merges and refreshes when the buffer is full or at ``min_samples``."""
        self._update_valid(_vector(x, self.dim))

    def refresh(self):
        """Merge the buffered vectors and recompute the precision now (needs 2 vectors in all)."""
        if self.count < 2:
            raise RefusalInputError(f"refresh needs at least 2 vectors, have {self.count}")
        self._refresh(force=True)

    def _score_valid(self, x):
        if self._count < self.min_samples:
            return 0.0
        delta = self._delta
        np.subtract(x, self._mean, out=delta)
        self._precision.dot(delta, out=self._product)
        squared = float(delta.dot(self._product))
        return math.sqrt(squared) if squared > 0.0 else 0.0

    def _update_valid(self, x):
        pending = self._pending_count
        self._pending[pending] = x
        self._pending_count = pending = pending + 1
        if pending == self.refresh_every or (
            self._count < self.min_samples <= self._count + pending
        ):
            self._refresh()

    def _merged(self):
        """(count, mean, M2) of the merged statistics and the buffer together (new arrays)."""
        count, mean, comoment = self._count, self._mean.copy(), self._comoment.copy()
        batch = self._pending_count
        if batch:
            rows = self._pending[:batch]
            batch_mean = rows.mean(axis=0)
            centred = rows - batch_mean
            total = count + batch
            delta = batch_mean - mean
            mean += delta * (batch / total)
            comoment += centred.T @ centred
            comoment += np.outer(delta, delta) * (count * batch / total)
            comoment += comoment.T   # exactly symmetric
            comoment *= 0.5
            count = total
        return count, mean, comoment

    def _refresh(self, force=False):
        """Merge the buffer; recompute the precision once ready (or if forced, from 2 vectors)."""
        count, mean, comoment = self._merged()
        self._count = count
        self._mean[...] = mean
        self._comoment[...] = comoment
        self._pending_count = 0
        if count < self.min_samples and not (force and count >= 2):
            return
        matrix = comoment / (count - 1)
        matrix[np.diag_indices(self.dim)] += self.ridge
        eigenvalues, eigenvectors = np.linalg.eigh(matrix)
        np.maximum(eigenvalues, self.ridge, out=eigenvalues)
        precision = (eigenvectors / eigenvalues) @ eigenvectors.T
        np.add(precision, precision.T, out=self._precision)
        self._precision *= 0.5

    def export_state(self):
        """Merged count, mean, co-moment and precision, and the buffered vectors
        (all little-endian float64 bytes)."""
        return {
            "dim": self.dim,
            "count": self._count,
            "mean": self._mean.astype("<f8").tobytes(),
            "comoment": self._comoment.astype("<f8").tobytes(),
            "precision": self._precision.astype("<f8").tobytes(),
            "pending": self._pending[: self._pending_count].astype("<f8").tobytes(),
        }

    def _parse_state(self, state):
        _require_mapping(state, "mahalanobis")
        d = _state_int(state, "dim", 1, MAX_DIM)
        if d != self.dim:
            raise RefusalStateError(f"mahalanobis state has dim {d}, this detector has dim {self.dim}")
        count = _state_int(state, "count", 0, 2**62)
        mean = _state_bytes(state, "mean", d)
        comoment = _state_bytes(state, "comoment", d * d).reshape(d, d)
        precision = _state_bytes(state, "precision", d * d).reshape(d, d)
        pending = _state_bytes(state, "pending", None)
        if pending.shape[0] % d or pending.shape[0] // d >= self.refresh_every:
            raise RefusalStateError(
                f"mahalanobis state buffers {pending.shape[0] / d:g} vectors of dim {d};"
                f" this detector buffers fewer than refresh_every={self.refresh_every}"
            )
        pending = pending.reshape(-1, d)
        if not (np.abs(pending) <= MAX_VECTOR_NORM).all() or (
            (pending * pending).sum(axis=1).max(initial=0.0) > _MAX_SQUARED_NORM
        ):
            raise RefusalStateError("mahalanobis state buffers a vector with norm above 1e15")
        for name, matrix in (("co-moment", comoment), ("precision", precision)):
            if not np.array_equal(matrix, matrix.T) or (np.diag(matrix) < 0.0).any():
                raise RefusalStateError(f"mahalanobis {name} matrix must be symmetric with a non-negative diagonal")
        if count == 0 and (mean.any() or comoment.any() or precision.any()):
            raise RefusalStateError("mahalanobis state has no merged vectors but non-zero statistics")
        return count, mean, comoment, precision, pending

    def _apply_state(self, parsed):
        count, mean, comoment, precision, pending = parsed
        self._count = count
        self._mean[...] = mean
        self._comoment[...] = comoment
        self._precision[...] = precision
        self._pending[: pending.shape[0]] = pending
        self._pending_count = pending.shape[0]
        if (count >= self.min_samples and not precision.any()) or (
            count < self.min_samples <= count + pending.shape[0]
        ):
            # exported under another min_samples: this detector is ready, so refresh now
            self._refresh()

    def import_state(self, state):
        """Restore :meth:`export_state` output bit for bit. Checks everything before changing."""
        self._apply_state(self._parse_state(state))


# ---------------------------------------------------------------------------------------
# novelty of discrete keys


class KeyNovelty:
    """How often each discrete context key has been seen.

    ``score(key)`` is 1.0 for a key never seen, 0.5 for a rare key (seen fewer than
    ``rare_below`` times) and 0.0 otherwise.

    >>> novelty = KeyNovelty(rare_below=2)
    >>> novelty.score("eu")
    1.0
    >>> novelty.observe("eu")
    >>> novelty.score("eu")
    0.5
    >>> novelty.observe("eu")
    >>> novelty.score("eu"), novelty.total
    (0.0, 2)
    """

    __slots__ = ("rare_below", "_counts", "_total")

    def __init__(self, rare_below=5, *, _prefix=""):
        self.rare_below = _config_int(rare_below, _prefix + "rare_below", 1, 2**62)
        self._counts = {}
        self._total = 0

    @property
    def total(self):
        """Number of keys observed, counting repeats."""
        return self._total

    def __len__(self):
        return len(self._counts)

    def count(self, key):
        """How many times ``key`` was observed."""
        return self._counts.get(_key(key), 0)

    def score(self, key):
        """1.0 unseen, 0.5 rare, 0.0 familiar."""
        seen = self._counts.get(_key(key), 0)
        if seen == 0:
            return 1.0
        return 0.5 if seen < self.rare_below else 0.0

    def observe(self, key):
        """Count one occurrence of ``key``."""
        key = _key(key)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._total += 1

    def export_state(self):
        """The count of every key, in order of first sight."""
        return {"counts": dict(self._counts)}

    def _parse_state(self, state):
        _require_mapping(state, "key novelty")
        counts = state.get("counts")
        if not isinstance(counts, Mapping):
            raise RefusalStateError("key novelty state field 'counts' must be a dict")
        for key, seen in counts.items():
            if type(key) is not str or type(seen) is not int or seen < 1:
                raise RefusalStateError(
                    f"key novelty counts must map strings to integers >= 1, got {key!r}: {seen!r}"
                )
        return dict(counts)

    def _apply_state(self, counts):
        self._counts = counts
        self._total = sum(counts.values())

    def import_state(self, state):
        """Restore :meth:`export_state` output, replacing every count."""
        self._apply_state(self._parse_state(state))


# ---------------------------------------------------------------------------------------
# the policy


@dataclass(frozen=True, slots=True)
class Assessment:
    """The verdict on one decision, and the confidence figures behind it."""

    refused: bool
    reason: str | None
    ood_score: float
    interval_low: float
    interval_high: float
    interval_width: float
    coverage: float
    calibration_size: int

    def to_dict(self):
        """The confidence block of a decision response; non-finite numbers become None."""
        return {
            "oodScore": _finite_or_none(self.ood_score),
            "intervalWidth": _finite_or_none(self.interval_width),
            "intervalLow": _finite_or_none(self.interval_low),
            "intervalHigh": _finite_or_none(self.interval_high),
            "coverage": self.coverage,
            "calibrationSize": self.calibration_size,
        }


def _finite_or_none(value):
    return value if math.isfinite(value) else None


def validate_config(config):
    """The complete refusal settings: ``config`` over :data:`DEFAULT_CONFIG`, each one checked.

    Raises :class:`RefusalConfigError` naming the first bad field (``refusal.<field>``).
    """
    if not isinstance(config, Mapping):
        raise RefusalConfigError(f"refusal config must be a mapping, got {type(config).__name__}")
    for field in config:
        if field not in DEFAULT_CONFIG:
            raise RefusalConfigError(
                f"refusal.{field} is not a refusal setting (known: {', '.join(DEFAULT_CONFIG)})"
            )
    merged = {**DEFAULT_CONFIG, **config}
    settings = {
        "enabled": _config_bool(merged["enabled"], "refusal.enabled"),
        "coverage": _config_number(merged["coverage"], "refusal.coverage", 0.0, 1.0, True, True),
        "window": _config_int(merged["window"], "refusal.window", 1, MAX_WINDOW),
        "min_calibration": _config_int(merged["min_calibration"], "refusal.min_calibration", 1, MAX_WINDOW),
        "max_interval_width": None,
        "ood_threshold": _config_number(
            merged["ood_threshold"], "refusal.ood_threshold", 0.0, math.inf, True, True
        ),
        "refuse_uncalibrated": _config_bool(merged["refuse_uncalibrated"], "refusal.refuse_uncalibrated"),
        "ood_min_samples": _config_int(merged["ood_min_samples"], "refusal.ood_min_samples", 2, 2**62),
        "rare_below": _config_int(merged["rare_below"], "refusal.rare_below", 1, 2**62),
    }
    if merged["max_interval_width"] is not None:
        settings["max_interval_width"] = _config_number(
            merged["max_interval_width"], "refusal.max_interval_width", 0.0, math.inf, True, True
        )
    # the window / min_calibration cross-checks against the coverage
    ConformalInterval(settings["coverage"], settings["window"], settings["min_calibration"], _prefix="refusal.")
    return settings


class RefusalPolicy:
    """Decides whether a decision is refused, from a capsule's ``refusal`` settings.

    Settings (all optional; see :data:`DEFAULT_CONFIG`): ``enabled``; ``coverage``,
    ``window`` and ``min_calibration`` of the :class:`ConformalInterval`;
    ``max_interval_width`` (reward units; None: no limit); ``ood_threshold`` (Mahalanobis
    distance above which a context vector is out of distribution); ``refuse_uncalibrated``;
    ``ood_min_samples`` (contexts seen before novelty can refuse; also the
    :class:`MahalanobisOOD` warm-up); ``rare_below`` (see :class:`KeyNovelty`).

    Reasons, first match wins:

    1. ``"ood"``: the context vector's distance exceeds ``ood_threshold``, or the context
       key was never seen, once ``ood_min_samples`` contexts have been seen (so a fresh
       capsule does not refuse every first request). A rare key does not refuse.
    2. ``"insufficient_calibration"``: fewer than ``min_calibration`` residuals, when
       ``refuse_uncalibrated`` is set. Calibration comes only from served decisions
       (:meth:`observe`), so this needs residuals from elsewhere (an imported state, or a
       shadow period with ``enabled`` false) or it refuses forever.
    3. ``"interval_too_wide"``: the calibrated interval is wider than ``max_interval_width``.
       An uncalibrated interval never refuses for width.

    With ``enabled`` false the policy runs in shadow: it learns and reports the same
    figures but never refuses.

    Call order per decision: :meth:`assess`, then :meth:`observe_context` with the same
    context (whether or not it was refused; the assessment must not see its own context),
    and at feedback of a served decision :meth:`observe` with the prediction that
    :meth:`assess` got and the reward.

    ``feature_dim`` fixes the context vector length; without it the first vector does.
    """

    def __init__(self, config, feature_dim=None):
        self.settings = validate_config(config)
        s = self.settings
        self.enabled = s["enabled"]
        self.ood_threshold = s["ood_threshold"]
        self.max_interval_width = s["max_interval_width"]
        self.refuse_uncalibrated = s["refuse_uncalibrated"]
        self.ood_min_samples = s["ood_min_samples"]
        self.conformal = ConformalInterval(s["coverage"], s["window"], s["min_calibration"])
        self.keys = KeyNovelty(s["rare_below"])
        self.vectors = None
        if feature_dim is not None:
            self.vectors = self._new_vectors(_config_int(feature_dim, "feature_dim", 1, MAX_DIM))
        self._width_limit = math.inf if self.max_interval_width is None else self.max_interval_width

    def _new_vectors(self, dim):
        return MahalanobisOOD(dim, min_samples=self.ood_min_samples)

    def assess(self, prediction, x=None, key=None):
        """The :class:`Assessment` of serving an option whose expected reward is ``prediction``.

        ``x`` is the context vector, ``key`` the discrete context; either may be omitted.
        Changes nothing.
        """
        conformal = self.conformal
        prediction = _scalar(prediction, "prediction")
        vectors = self.vectors
        if x is not None:
            x = _vector(x, vectors.dim if vectors is not None else None)
        if key is not None and type(key) is not str:
            _key(key)

        out_of_distribution = False
        ood_score = 0.0
        if x is not None and vectors is not None:
            ood_score = vectors._score_valid(x)
            out_of_distribution = ood_score > self.ood_threshold
        if key is not None:
            keys = self.keys
            novelty = keys.score(key)
            if x is None:
                ood_score = novelty
            if novelty == 1.0 and keys._total >= self.ood_min_samples:
                out_of_distribution = True

        n = conformal._size
        rank = -(-(n + 1) * conformal._numerator // conformal._denominator)
        q = conformal._sorted[rank - 1] if rank <= n else math.inf
        width = 2.0 * q
        calibrated = n >= conformal.min_calibration

        reason = None
        if self.enabled:
            if out_of_distribution:
                reason = "ood"
            elif not calibrated:
                if self.refuse_uncalibrated:
                    reason = "insufficient_calibration"
            elif width > self._width_limit:
                reason = "interval_too_wide"
        return Assessment(
            reason is not None, reason, ood_score,
            prediction - q, prediction + q, width, conformal.coverage, n,
        )

    def observe_context(self, x=None, key=None):
        """Count the context of a decision (refused or not) in the novelty statistics."""
        vectors = self.vectors
        if x is not None:
            x = _vector(x, vectors.dim if vectors is not None else None)
        if key is not None:
            _key(key)
        # everything checked: now apply
        if x is not None:
            if vectors is None:
                vectors = self.vectors = self._new_vectors(x.shape[0])
            vectors._update_valid(x)
        if key is not None:
            self.keys.observe(key)

    def observe(self, prediction, reward):
        """Calibrate with a served decision: ``prediction`` as given to :meth:`assess`, its reward."""
        self.conformal.observe(prediction, reward)

    def export_state(self):
        """Everything learned: residuals, vector statistics (None before the first vector), key counts."""
        return {
            "conformal": self.conformal.export_state(),
            "vectors": None if self.vectors is None else self.vectors.export_state(),
            "keys": self.keys.export_state(),
        }

    def import_state(self, state):
        """Restore :meth:`export_state` output. Checks every part before changing any."""
        _require_mapping(state, "refusal")
        for field in state:
            if field not in ("conformal", "vectors", "keys"):
                raise RefusalStateError(f"refusal state has an unknown field {field!r}")
        conformal = self.conformal._parse_state(state.get("conformal"))
        keys = self.keys._parse_state(state.get("keys"))
        vector_state = state.get("vectors")
        vectors = self.vectors
        parsed_vectors = None
        if vector_state is not None:
            if vectors is None:
                _require_mapping(vector_state, "mahalanobis")
                dim = _state_int(vector_state, "dim", 1, MAX_DIM)
                vectors = self._new_vectors(dim)
            parsed_vectors = vectors._parse_state(vector_state)
        elif vectors is not None:
            vectors = self._new_vectors(vectors.dim)
        self.conformal._apply_state(conformal)
        self.keys._apply_state(keys)
        if parsed_vectors is not None:
            vectors._apply_state(parsed_vectors)
        self.vectors = vectors
