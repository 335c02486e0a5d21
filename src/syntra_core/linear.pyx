"""Contextual linear bandits: LinUCB and linear Thompson sampling over ridge regression.

The caller encodes each context as a float64 vector ``x`` of dimension ``d`` (bias term
included). A :class:`LinearModel` fits a ridge regression of the reward on features of
``x``, in one of two variants:

* **disjoint** (Li et al., 2010, "A contextual-bandit approach to personalized news
  article recommendation", LinUCB with disjoint linear models): each arm ``a`` has its own
  ``A_a = lambda I + sum x x^T`` and ``b_a = sum r x`` over the rewards it received;
* **shared** (arms described by embeddings ``e_a`` of dimension ``m``): one model over
  ``phi(x, a) = x (x) e_a``, the Kronecker product (``np.kron(x, e_a)``, dimension
  ``d * m``), so what is learnt about one arm carries over to arms with similar embeddings.

The model keeps ``A^-1`` directly and updates it per observation by the Sherman-Morrison
formula (Sherman and Morrison, 1950),
``A^-1 <- A^-1 - (A^-1 phi)(A^-1 phi)^T / (1 + phi^T A^-1 phi)``, which costs ``O(p^2)``
for ``p`` model dimensions instead of an ``O(p^3)`` inversion. Rounding errors of repeated
rank-one updates accumulate, so the model also keeps ``A`` itself (a cheap rank-one add)
and every ``reinvert_every`` updates of a model recomputes ``A^-1`` exactly from it: a
Cholesky factorisation ``A = L L^T``, the inverse ``M = L^-1`` of the triangular factor, and
``A^-1 = M^T M`` (Golub and Van Loan, *Matrix Computations*, 4th ed., sections 4.2 and
3.1). ``theta = A^-1 b`` is kept current after every update.

Rules read the model and never write it, so several rules can share one model:

* :class:`LinUCB` plays the arm with the highest upper confidence bound
  ``theta^T phi + alpha * sqrt(phi^T A^-1 phi)``; ties are broken uniformly at random and
  the propensity says so.
* :class:`LinTS` is Thompson sampling with linear payoffs (Agrawal and Goyal, 2013,
  "Thompson Sampling for Contextual Bandits with Linear Payoffs"): each arm's score is a
  draw of its marginal posterior ``N(theta^T phi, v^2 phi^T A^-1 phi)``, which needs no matrix
  factorisation per decision. As in :class:`~syntra_core.bandits.BetaThompson`, the play
  probabilities are computed by Monte Carlo over ``samples`` joint draws and the arm is
  drawn from them, with an exploration floor: an arm that won ``wins_k`` draws is played
  with probability ``(wins_k + 1/arms) / (samples + 1)``. So the logged propensity is exactly
  the probability the arm was played with, and never 0.

Features must be finite and at most ``1e6`` in magnitude, rewards finite and at most
``1e9``: larger values are refused as a caller bug rather than left to overflow the model.

A model and its rules keep their scratch vectors in the objects, so one model must not be
used from two threads at once without a lock (the Python methods hold the GIL throughout).

Example:

>>> import numpy as np
>>> from syntra_core.linear import LinearModel, LinUCB
>>> model = LinearModel(dim=3, n_arms=2)
>>> rule = LinUCB(model, alpha=1.0)
>>> x = np.array([0.5, 0.2, 1.0])          # two features and the bias
>>> arm, propensity = rule.select(x, seed=7, sequence=0)
>>> arm in (0, 1) and propensity == 0.5    # an untrained model ties both arms
True
>>> for _ in range(20):
...     model.update(1, x, 1.0)
...     model.update(0, x, 0.0)
>>> rule.select(x, seed=7, sequence=1)
(1, 1.0)
>>> bool(rule.predict(x)[1] > 0.9)
True
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport exp, fabs, isfinite, sqrt, INFINITY
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset

from syntra_core.bandits cimport checked_arm, pick_among_best
from syntra_core.rng cimport Stream, stream_init, next_double, next_below, std_normal

from collections.abc import Mapping
import numbers
import operator

import numpy as np

MAX_DIM = 256
MAX_ARMS = 256
MAX_EMBEDDING_DIM = 256
MAX_MODEL_DIM = 1024       # d * m of the shared variant: A^-1 alone is 8 MiB at this size
MAX_SAMPLES = 100_000
MAX_REINVERT_EVERY = 1 << 62
FEATURE_LIMIT = 1e6
REWARD_LIMIT = 1e9
DEFAULT_REINVERT_EVERY = 256

cdef double _FEATURE_LIMIT = FEATURE_LIMIT
cdef double _REWARD_LIMIT = REWARD_LIMIT


cdef void* _allocate(size_t count, size_t size) except NULL:
    cdef void* block = PyMem_Malloc(count * size if count else size)
    if block == NULL:
        raise MemoryError()
    return block


def _integer_setting(str name, value, low, high):
    # operator.index refuses floats, so 2.5 is never truncated; a bool is a bug in the caller.
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {number}")
    return number


def _real_setting(str name, value, bint zero_allowed):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not isfinite(number) or number < 0.0 or (number == 0.0 and not zero_allowed):
        bound = ">= 0" if zero_allowed else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


cdef const double[::1] _context(LinearModel model, object x) except *:
    """``x`` as a contiguous float64 vector of length ``model.dim``, every entry checked."""
    cdef const double[::1] view
    if x is None:  # a memoryview would take None as an empty vector
        raise TypeError("x must hold real numbers, got None")
    try:  # a contiguous float64 vector is used as it is, without a copy
        view = x
    except (TypeError, ValueError, BufferError):
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"x must hold real numbers, got dtype {array.dtype}") from None
        if array.ndim != 1:
            raise ValueError(f"x must be a 1-D vector of {model.dim} numbers, got shape {array.shape}") from None
        view = np.ascontiguousarray(array, dtype=np.float64)
    if view.shape[0] != model.dim:
        raise ValueError(f"x must be a 1-D vector of {model.dim} numbers, got shape ({view.shape[0]},)")
    cdef Py_ssize_t i
    cdef double value
    for i in range(model.dim):
        value = view[i]
        if not isfinite(value):
            raise ValueError(f"x[{i}] must be finite, got {value!r}")
        if fabs(value) > _FEATURE_LIMIT:
            raise ValueError(f"x[{i}] = {value!r} exceeds the feature limit {FEATURE_LIMIT:g} in magnitude")
    return view


cdef double _checked_reward(object reward) except? -1.0:
    cdef double value
    if type(reward) is float:  # the common case, without the abstract-class check
        value = reward
    elif isinstance(reward, (bool, np.bool_)) or not isinstance(reward, numbers.Real):
        raise TypeError(f"reward must be a real number, got {type(reward).__name__} {reward!r}")
    else:
        value = float(reward)
    if not isfinite(value):
        raise ValueError(f"reward must be finite, got {reward!r}")
    if fabs(value) > _REWARD_LIMIT:
        raise ValueError(f"reward {reward!r} exceeds the reward limit {REWARD_LIMIT:g} in magnitude")
    return value


cdef bint _cholesky_inverse(const double* a, double* factor, double* inverse, int p) noexcept nogil:
    """Write the inverse of the symmetric positive definite ``a`` into ``inverse``.

    ``factor`` (p x p) is workspace. Returns False, leaving ``inverse`` untouched, if ``a``
    is not numerically positive definite.
    """
    cdef int i, j, k
    cdef double s, pivot
    # A = L L^T, L in the lower triangle of `factor` (Cholesky-Banachiewicz, row by row).
    for i in range(p):
        for j in range(i + 1):
            s = a[i * p + j]
            for k in range(j):
                s -= factor[i * p + k] * factor[j * p + k]
            if i == j:
                if not (s > 0.0 and isfinite(s)):
                    return False
                factor[i * p + i] = sqrt(s)
            else:
                factor[i * p + j] = s / factor[j * p + j]
    # M = L^-1 in place, column by column: column j reads L only in columns > j and in
    # rows below the entry being written, which are still L.
    for j in range(p):
        pivot = 1.0 / factor[j * p + j]
        for i in range(j + 1, p):
            s = factor[i * p + j] * pivot
            for k in range(j + 1, i):
                s += factor[i * p + k] * factor[k * p + j]
            factor[i * p + j] = -s / factor[i * p + i]
        factor[j * p + j] = pivot
    # A^-1 = M^T M; M is lower triangular, so only rows k >= max(i, j) contribute.
    for i in range(p):
        for j in range(i, p):
            s = 0.0
            for k in range(j, p):
                s += factor[k * p + i] * factor[k * p + j]
            inverse[i * p + j] = s
            inverse[j * p + i] = s
    return True


cdef class LinearModel:
    """Ridge-regression statistics of a contextual linear bandit (see the module docs).

    ``dim`` is the length of the context vector (bias included), ``ridge`` the prior
    ``lambda`` of ``A = lambda I``, ``reinvert_every`` the number of updates of a model
    between exact re-inversions of ``A`` (0 never re-inverts). Without ``embeddings`` every
    arm has its own model (disjoint); with an ``(n_arms, m)`` array of arm embeddings one
    model covers all arms over ``np.kron(x, e_a)`` (shared).
    """

    def __cinit__(self, dim, n_arms, ridge=1.0, reinvert_every=DEFAULT_REINVERT_EVERY,
                  embeddings=None):
        self.dim = _integer_setting("dim", dim, 1, MAX_DIM)
        self.n_arms = _integer_setting("n_arms", n_arms, 1, MAX_ARMS)
        self.ridge = _real_setting("ridge", ridge, False)
        self.reinvert_every = _integer_setting("reinvert_every", reinvert_every, 0, MAX_REINVERT_EVERY)
        cdef const double[:, ::1] table
        cdef Py_ssize_t k, j
        if embeddings is None:
            self.shared = False
            self.embedding_dim = 0
            self.model_dim = self.dim
            self.n_models = self.n_arms
        else:
            table = self._checked_embeddings(embeddings)
            self.shared = True
            self.embedding_dim = table.shape[1]
            self.model_dim = self.dim * self.embedding_dim
            self.n_models = 1
        cdef size_t p = self.model_dim
        self._a = <double*>_allocate(self.n_models * p * p, sizeof(double))
        self._a_inv = <double*>_allocate(self.n_models * p * p, sizeof(double))
        self._b = <double*>_allocate(self.n_models * p, sizeof(double))
        self._theta = <double*>_allocate(self.n_models * p, sizeof(double))
        self._arm_updates = <int64_t*>_allocate(self.n_arms, sizeof(int64_t))
        self._embeddings = <double*>_allocate(self.n_arms * self.embedding_dim, sizeof(double))
        self._phi = <double*>_allocate(p, sizeof(double))
        self._projected = <double*>_allocate(p, sizeof(double))
        self._factor = <double*>_allocate(p * p, sizeof(double))
        if self.shared:
            for k in range(self.n_arms):
                for j in range(self.embedding_dim):
                    self._embeddings[k * self.embedding_dim + j] = table[k, j]
        self.reset_c()

    def __dealloc__(self):
        PyMem_Free(self._a)
        PyMem_Free(self._a_inv)
        PyMem_Free(self._b)
        PyMem_Free(self._theta)
        PyMem_Free(self._arm_updates)
        PyMem_Free(self._embeddings)
        PyMem_Free(self._phi)
        PyMem_Free(self._projected)
        PyMem_Free(self._factor)

    def _checked_embeddings(self, embeddings):
        array = np.asarray(embeddings)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"embeddings must hold real numbers, got dtype {array.dtype}")
        if array.ndim != 2 or array.shape[0] != self.n_arms:
            raise ValueError(
                f"embeddings must have shape (n_arms={self.n_arms}, m), got {array.shape}"
            )
        m = array.shape[1]
        if not 1 <= m <= MAX_EMBEDDING_DIM:
            raise ValueError(f"embeddings must have 1..{MAX_EMBEDDING_DIM} columns, got {m}")
        if self.dim * m > MAX_MODEL_DIM:
            raise ValueError(
                f"embeddings: dim * m = {self.dim} * {m} exceeds the model limit {MAX_MODEL_DIM}"
            )
        array = np.ascontiguousarray(array, dtype=np.float64)
        bad = np.argwhere(~np.isfinite(array) | (np.abs(array) > FEATURE_LIMIT))
        if len(bad):
            k, j = (int(i) for i in bad[0])
            raise ValueError(
                f"embeddings[{k}, {j}] must be finite and at most {FEATURE_LIMIT:g} in magnitude,"
                f" got {array[k, j]!r}"
            )
        return array

    cdef void reset_c(self) noexcept nogil:
        cdef size_t p = self.model_dim
        cdef int model
        cdef size_t i
        memset(self._a, 0, self.n_models * p * p * sizeof(double))
        memset(self._a_inv, 0, self.n_models * p * p * sizeof(double))
        memset(self._b, 0, self.n_models * p * sizeof(double))
        memset(self._theta, 0, self.n_models * p * sizeof(double))
        memset(self._arm_updates, 0, self.n_arms * sizeof(int64_t))
        for model in range(self.n_models):
            for i in range(p):
                self._a[model * p * p + i * p + i] = self.ridge
                self._a_inv[model * p * p + i * p + i] = 1.0 / self.ridge
        self.reinversions = 0

    cdef const double* features_for(self, const double* x, int arm) noexcept nogil:
        """phi(x, arm): ``x`` itself (disjoint) or ``x (x) e_arm`` in the scratch vector (shared)."""
        if not self.shared:
            return x
        cdef int m = self.embedding_dim
        cdef const double* e = self._embeddings + arm * m
        cdef int i, j
        cdef double xi
        for i in range(self.dim):
            xi = x[i]
            for j in range(m):
                self._phi[i * m + j] = xi * e[j]
        return self._phi

    cdef double mean_c(self, const double* x, int arm) noexcept nogil:
        """theta^T phi(x, arm)."""
        cdef int p = self.model_dim
        cdef const double* phi = self.features_for(x, arm)
        cdef const double* theta = self._theta + (0 if self.shared else arm * p)
        cdef double mean = 0.0
        cdef int i
        for i in range(p):
            mean += theta[i] * phi[i]
        return mean

    cdef double mean_and_variance_c(self, const double* x, int arm, double* variance) noexcept nogil:
        """theta^T phi(x, arm), and phi^T A^-1 phi in ``variance`` (clamped at 0)."""
        cdef int p = self.model_dim
        cdef size_t model = 0 if self.shared else arm
        cdef const double* phi = self.features_for(x, arm)
        cdef const double* theta = self._theta + model * p
        cdef const double* inverse = self._a_inv + model * p * p
        cdef const double* row
        cdef double mean = 0.0, quadratic = 0.0, off_diagonal
        cdef int i, j
        # A^-1 is symmetric: the diagonal plus twice the upper triangle.
        for i in range(p):
            mean += theta[i] * phi[i]
            row = inverse + i * p
            off_diagonal = 0.0
            for j in range(i + 1, p):
                off_diagonal += row[j] * phi[j]
            quadratic += phi[i] * (row[i] * phi[i] + 2.0 * off_diagonal)
        variance[0] = quadratic if quadratic > 0.0 else 0.0
        return mean

    cdef LinearStatus update_c(self, int arm, const double* x, double reward) noexcept nogil:
        """Add one observation; on a non-OK status nothing changes."""
        if arm < 0 or arm >= self.n_arms:
            return LINEAR_BAD_ARM
        cdef int i, j
        for i in range(self.dim):
            if not isfinite(x[i]):
                return LINEAR_NOT_FINITE
            if fabs(x[i]) > _FEATURE_LIMIT:
                return LINEAR_TOO_LARGE
        if not isfinite(reward):
            return LINEAR_NOT_FINITE
        if fabs(reward) > _REWARD_LIMIT:
            return LINEAR_TOO_LARGE
        cdef size_t p = self.model_dim
        cdef int model = 0 if self.shared else arm
        cdef const double* phi = self.features_for(x, arm)
        cdef double* a = self._a + model * p * p
        cdef double* inverse = self._a_inv + model * p * p
        cdef double* b = self._b + model * p
        cdef double* theta = self._theta + model * p
        cdef double* u = self._projected
        cdef double* row
        cdef double s, quadratic = 0.0, scale, ui, phi_i
        # u = A^-1 phi and phi^T A^-1 phi, checked before anything is written.
        for i in range(<int>p):
            row = inverse + i * p
            s = 0.0
            for j in range(<int>p):
                s += row[j] * phi[j]
            u[i] = s
            quadratic += phi[i] * s
        if not (isfinite(quadratic) and quadratic > -1.0):
            return LINEAR_UNSTABLE
        # Sherman-Morrison; (u_i u_j) * scale keeps A^-1 exactly symmetric.
        scale = 1.0 / (1.0 + quadratic)
        for i in range(<int>p):
            row = inverse + i * p
            ui = u[i]
            for j in range(<int>p):
                row[j] -= (ui * u[j]) * scale
            phi_i = phi[i]
            row = a + i * p
            for j in range(<int>p):
                row[j] += phi_i * phi[j]
            b[i] += reward * phi_i
        self._arm_updates[arm] += 1
        cdef int64_t done = self._arm_updates[arm]
        if self.shared:
            done = 0
            for i in range(self.n_arms):
                done += self._arm_updates[i]
        if self.reinvert_every > 0 and done % self.reinvert_every == 0:
            self.reinvert_c(model)
        for i in range(<int>p):
            row = inverse + i * p
            s = 0.0
            for j in range(<int>p):
                s += row[j] * b[j]
            theta[i] = s
        return LINEAR_OK

    cdef bint reinvert_c(self, int model) noexcept nogil:
        """Recompute A^-1 of ``model`` exactly from A; keeps the old one if A is not SPD."""
        cdef size_t p = self.model_dim
        if _cholesky_inverse(self._a + model * p * p, self._factor,
                             self._a_inv + model * p * p, <int>p):
            self.reinversions += 1
            return True
        return False

    def update(self, arm, x, reward):
        """Record ``reward`` for ``arm`` played in context ``x``.

        Raises TypeError if ``arm`` is not an integer (bools included) or ``x``/``reward``
        are not real numbers, and ValueError for an arm out of range, a context of the
        wrong length, or a non-finite or too large feature or reward. A refused update
        changes nothing.
        """
        cdef int index = checked_arm(arm, self.n_arms)
        cdef const double[::1] features = _context(self, x)
        cdef double value = _checked_reward(reward)
        cdef LinearStatus status = self.update_c(index, &features[0], value)
        if status == LINEAR_UNSTABLE:
            raise ValueError("update refused: it would make the model non-finite")
        if status != LINEAR_OK:  # the checks above make this unreachable
            raise ValueError(f"update refused with status {status}")

    def reset(self):
        """Forget every observation: back to the prior ``A = ridge * I``, ``b = 0``."""
        self.reset_c()

    @property
    def a(self):
        """A copy of ``A``: shape (n_arms, d, d) disjoint, (p, p) shared."""
        return _matrices(self, self._a)

    @property
    def a_inverse(self):
        """A copy of the maintained ``A^-1``: shape (n_arms, d, d) disjoint, (p, p) shared."""
        return _matrices(self, self._a_inv)

    @property
    def b(self):
        """A copy of ``b``: shape (n_arms, d) disjoint, (p,) shared."""
        return _vectors(self, self._b)

    @property
    def theta(self):
        """A copy of ``theta = A^-1 b``: shape (n_arms, d) disjoint, (p,) shared."""
        return _vectors(self, self._theta)

    @property
    def counts(self):
        """Observations per arm (int64 array)."""
        return np.array([self._arm_updates[k] for k in range(self.n_arms)], dtype=np.int64)

    @property
    def embeddings(self):
        """A copy of the arm embeddings (n_arms, m), or None for the disjoint variant."""
        if not self.shared:
            return None
        cdef Py_ssize_t m = self.embedding_dim
        return np.array([self._embeddings[i] for i in range(self.n_arms * m)]).reshape(self.n_arms, m)

    def _layout(self):
        return {
            "variant": "shared" if self.shared else "disjoint",
            "dim": self.dim,
            "n_arms": self.n_arms,
            "embedding_dim": self.embedding_dim,
            "ridge": self.ridge,
        }

    def export_state(self):
        """The model's exact state: its layout and the raw arrays as bytes.

        :meth:`import_state` on a model with the same layout (variant, dimensions, ridge
        and embeddings) restores it bit for bit.
        """
        cdef size_t p = self.model_dim
        state = self._layout()
        state.update({
            "embeddings": (<char*>self._embeddings)[:self.n_arms * self.embedding_dim * sizeof(double)],
            "a": (<char*>self._a)[:self.n_models * p * p * sizeof(double)],
            "a_inverse": (<char*>self._a_inv)[:self.n_models * p * p * sizeof(double)],
            "b": (<char*>self._b)[:self.n_models * p * sizeof(double)],
            "theta": (<char*>self._theta)[:self.n_models * p * sizeof(double)],
            "counts": (<char*>self._arm_updates)[:self.n_arms * sizeof(int64_t)],
            "reinversions": self.reinversions,
        })
        return state

    def import_state(self, state):
        """Load :meth:`export_state` output, replacing this model's statistics.

        Raises ValueError, changing nothing, if the state is malformed or its layout differs.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"linear model state must be a mapping, got {type(state).__name__}")
        missing = sorted({"variant", "dim", "n_arms", "embedding_dim", "ridge", "embeddings", "a",
                          "a_inverse", "b", "theta", "counts", "reinversions"} - set(state))
        if missing:
            raise ValueError(f"linear model state lacks {missing}")
        for key, expected in self._layout().items():
            if type(state[key]) is not type(expected) or state[key] != expected:
                raise ValueError(f"linear model state: {key} is {state[key]!r}, this model has {expected!r}")
        cdef size_t p = self.model_dim
        sizes = {
            "embeddings": self.n_arms * self.embedding_dim * sizeof(double),
            "a": self.n_models * p * p * sizeof(double),
            "a_inverse": self.n_models * p * p * sizeof(double),
            "b": self.n_models * p * sizeof(double),
            "theta": self.n_models * p * sizeof(double),
            "counts": self.n_arms * sizeof(int64_t),
        }
        raw = {}
        for key, size in sizes.items():
            if not isinstance(state[key], (bytes, bytearray, memoryview)):
                raise ValueError(f"linear model state: {key} must be bytes, got {type(state[key]).__name__}")
            raw[key] = bytes(state[key])
            if len(raw[key]) != size:
                raise ValueError(f"linear model state: {key} has {len(raw[key])} bytes, expected {size}")
        if raw["embeddings"] != (<char*>self._embeddings)[:sizes["embeddings"]]:
            raise ValueError("linear model state: embeddings differ from this model's")
        for key in ("a", "a_inverse", "b", "theta"):
            if not np.isfinite(np.frombuffer(raw[key], dtype=np.float64)).all():
                raise ValueError(f"linear model state: {key} holds non-finite values")
        if (np.frombuffer(raw["counts"], dtype=np.int64) < 0).any():
            raise ValueError("linear model state: counts must be >= 0")
        reinversions = state["reinversions"]
        if type(reinversions) is not int or not 0 <= reinversions < 2**63:
            raise ValueError(f"linear model state: reinversions must be an int >= 0, got {reinversions!r}")
        cdef bytes a = raw["a"], a_inverse = raw["a_inverse"], b = raw["b"]
        cdef bytes theta = raw["theta"], counts = raw["counts"]
        memcpy(self._a, <char*>a, len(a))
        memcpy(self._a_inv, <char*>a_inverse, len(a_inverse))
        memcpy(self._b, <char*>b, len(b))
        memcpy(self._theta, <char*>theta, len(theta))
        memcpy(self._arm_updates, <char*>counts, len(counts))
        self.reinversions = reinversions


cdef object _matrices(LinearModel model, const double* data):
    """A copy of per-model p x p matrices: (n_arms, p, p) disjoint, (p, p) shared."""
    cdef Py_ssize_t p = model.model_dim
    out = np.empty((model.n_models, p, p))
    cdef double[:, :, ::1] view = out
    memcpy(&view[0, 0, 0], data, model.n_models * p * p * sizeof(double))
    return out[0] if model.shared else out


cdef object _vectors(LinearModel model, const double* data):
    """A copy of per-model vectors: (n_arms, p) disjoint, (p,) shared."""
    cdef Py_ssize_t p = model.model_dim
    out = np.empty((model.n_models, p))
    cdef double[:, ::1] view = out
    memcpy(&view[0, 0], data, model.n_models * p * sizeof(double))
    return out[0] if model.shared else out


cdef class LinearRule:
    """A decision rule over a :class:`LinearModel`; subclasses implement ``distribution_c``.

    The rule reads the model and never writes it; :meth:`update` and :meth:`reset` are
    shortcuts to the model's, so they affect every rule sharing it.
    """

    def __cinit__(self, LinearModel model not None, *args, **kwargs):
        if type(self) is LinearRule:
            raise TypeError("LinearRule is abstract: use LinUCB or LinTS")
        self.model = model
        self._scores = <double*>_allocate(model.n_arms, sizeof(double))
        self._probabilities = <double*>_allocate(model.n_arms, sizeof(double))

    def __dealloc__(self):
        PyMem_Free(self._scores)
        PyMem_Free(self._probabilities)

    cdef void distribution_c(self, const double* x, Stream* st, double* out) noexcept nogil:
        # Never reached: the constructor refuses the base class.
        cdef int k
        for k in range(self.model.n_arms):
            out[k] = 1.0 / self.model.n_arms

    cdef int select_c(self, const double* x, Stream* st, double* propensity) noexcept nogil:
        """Draw an arm from ``distribution_c``; ``propensity`` gets its probability."""
        cdef int n = self.model.n_arms
        cdef double* probs = self._probabilities
        self.distribution_c(x, st, probs)
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

    cdef void predict_c(self, const double* x, double* mean_out) noexcept nogil:
        cdef int k
        for k in range(self.model.n_arms):
            mean_out[k] = self.model.mean_c(x, k)

    def select(self, x, uint64_t seed, uint64_t sequence):
        """Choose an arm for context ``x`` with the stream of ``(seed, sequence)``.

        Returns ``(arm, propensity)``: the propensity is the probability the arm had.
        """
        cdef const double[::1] features = _context(self.model, x)
        cdef Stream st
        cdef double propensity
        stream_init(&st, seed, sequence)
        cdef int arm = self.select_c(&features[0], &st, &propensity)
        return arm, propensity

    def distribution(self, x, uint64_t seed, uint64_t sequence):
        """The play probability of every arm that :meth:`select` would use for these arguments."""
        out = np.empty(self.model.n_arms)
        self.distribution_into(x, seed, sequence, out)
        return out

    def distribution_into(self, x, uint64_t seed, uint64_t sequence, double[::1] out not None):
        """:meth:`distribution` written into ``out`` (float64, length n_arms)."""
        if out.shape[0] != self.model.n_arms:
            raise ValueError(f"out must have {self.model.n_arms} entries, got {out.shape[0]}")
        cdef const double[::1] features = _context(self.model, x)
        cdef Stream st
        stream_init(&st, seed, sequence)
        self.distribution_c(&features[0], &st, &out[0])

    def predict(self, x):
        """The model's expected reward ``theta^T phi(x, a)`` for every arm."""
        cdef const double[::1] features = _context(self.model, x)
        out = np.empty(self.model.n_arms)
        cdef double[::1] view = out
        self.predict_c(&features[0], &view[0])
        return out

    def update(self, arm, x, reward):
        """Record a reward in the model (see :meth:`LinearModel.update`)."""
        self.model.update(arm, x, reward)

    def reset(self):
        """Reset the model to its prior (see :meth:`LinearModel.reset`)."""
        self.model.reset()

    def export_state(self):
        """The rule's own state beyond the model's: none, its settings are its whole self."""
        return {}

    def import_state(self, state):
        """Load :meth:`export_state` output; the model restores its own state."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


cdef class LinUCB(LinearRule):
    """LinUCB: the arm with the highest ``theta^T phi + alpha * sqrt(phi^T A^-1 phi)``.

    Ties are broken uniformly at random, with propensity ``1 / ties``.
    """

    def __cinit__(self, LinearModel model not None, alpha=1.0):
        self.alpha = _real_setting("alpha", alpha, True)

    cdef int best_arms(self, const double* x) noexcept nogil:
        """Scores into the scratch vector; returns how many arms share the best score."""
        cdef double best = -INFINITY, variance, score
        cdef int k, ties = 0
        for k in range(self.model.n_arms):
            score = self.model.mean_and_variance_c(x, k, &variance) + self.alpha * sqrt(variance)
            self._scores[k] = score
            if score > best:
                best = score
                ties = 1
            elif score == best:
                ties += 1
        if ties == 0:  # every score NaN: cannot come from a finite model, so play uniformly
            for k in range(self.model.n_arms):
                self._scores[k] = 0.0
            ties = self.model.n_arms
        return ties

    cdef void distribution_c(self, const double* x, Stream* st, double* out) noexcept nogil:
        cdef int ties = self.best_arms(x)
        cdef double best = -INFINITY
        cdef int k
        for k in range(self.model.n_arms):
            if self._scores[k] > best:
                best = self._scores[k]
        for k in range(self.model.n_arms):
            out[k] = 1.0 / ties if self._scores[k] == best else 0.0

    cdef int select_c(self, const double* x, Stream* st, double* propensity) noexcept nogil:
        cdef int ties = self.best_arms(x)
        cdef int n = self.model.n_arms
        cdef double best = -INFINITY
        cdef int k
        for k in range(n):
            if self._scores[k] > best:
                best = self._scores[k]
        propensity[0] = 1.0 / ties
        return pick_among_best(self._scores, n, best, ties, st)


cdef class LinTS(LinearRule):
    """Linear Thompson sampling over marginal posteriors, with exact propensities.

    ``v`` scales the posterior spread; ``samples`` is the number of joint draws behind the
    play probabilities (see the module docs).
    """

    def __cinit__(self, LinearModel model not None, v=0.5, samples=64):
        self.v = _real_setting("v", v, False)
        self.samples = _integer_setting("samples", samples, 1, MAX_SAMPLES)
        self._deviations = <double*>_allocate(model.n_arms, sizeof(double))

    def __dealloc__(self):
        PyMem_Free(self._deviations)

    cdef void distribution_c(self, const double* x, Stream* st, double* out) noexcept nogil:
        cdef int n = self.model.n_arms
        cdef double* means = self._scores
        cdef double variance, draw, best_draw
        cdef int k, m, best, ties
        for k in range(n):
            means[k] = self.model.mean_and_variance_c(x, k, &variance)
            self._deviations[k] = self.v * sqrt(variance)
            out[k] = 0.0
        for m in range(self.samples):
            best = 0
            best_draw = -INFINITY
            ties = 0
            for k in range(n):
                draw = means[k] + self._deviations[k] * std_normal(st)
                if draw > best_draw:
                    best_draw = draw
                    best = k
                    ties = 1
                elif draw == best_draw:  # exact ties (zero spread): uniform by reservoir
                    ties += 1
                    if next_below(st, <uint64_t>ties) == 0:
                        best = k
            out[best] += 1.0
        # Exploration floor: 1/(samples+1) of the mass in total, whatever n is.
        for k in range(n):
            out[k] = (out[k] + 1.0 / n) / (self.samples + 1.0)


def run_linear_logistic(LinearRule rule not None, theta_true, Py_ssize_t rounds, uint64_t seed):
    """Play ``rounds`` decide+update rounds in a linear-logistic world, entirely in C.

    Round ``t`` derives its stream from ``(seed, t)`` and draws the context: ``d - 1``
    features uniform on [0, 1) followed by a bias of 1. Arm ``a`` pays 1 with probability
    ``sigmoid(theta_true[a] . x)``, else 0. ``theta_true`` has shape ``(n_arms, d)``.

    Returns ``(plays per arm, total reward, total expected regret)``, the regret being
    the sum over rounds of the best arm's success probability minus the played arm's.
    """
    cdef LinearModel model = rule.model
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    truth = np.ascontiguousarray(theta_true, dtype=np.float64)
    if truth.shape != (model.n_arms, model.dim):
        raise ValueError(f"theta_true must have shape ({model.n_arms}, {model.dim}), got {truth.shape}")
    if not np.isfinite(truth).all():
        raise ValueError("theta_true must be finite")
    cdef const double[:, ::1] weights = truth
    cdef int d = model.dim, n = model.n_arms
    context = np.empty(d)
    success = np.empty(n)
    plays = np.zeros(n, dtype=np.int64)
    cdef double[::1] x = context
    cdef double[::1] chance = success
    cdef int64_t[::1] counts = plays
    cdef Stream st
    cdef double propensity, logit, best, reward, total_reward = 0.0, regret = 0.0
    cdef int arm, k, i
    cdef Py_ssize_t t
    with nogil:
        for t in range(rounds):
            stream_init(&st, seed, <uint64_t>t)
            for i in range(d - 1):
                x[i] = next_double(&st)
            x[d - 1] = 1.0
            best = 0.0
            for k in range(n):
                logit = 0.0
                for i in range(d):
                    logit += weights[k, i] * x[i]
                chance[k] = 1.0 / (1.0 + exp(-logit))
                if chance[k] > best:
                    best = chance[k]
            arm = rule.select_c(&x[0], &st, &propensity)
            counts[arm] += 1
            regret += best - chance[arm]
            reward = 1.0 if next_double(&st) < chance[arm] else 0.0
            total_reward += reward
            model.update_c(arm, &x[0], reward)
    return plays, total_reward, regret
