# Ridge-regression statistics for contextual linear bandits, and the rules that read them.
#
# A LinearModel keeps A, A^-1, b and theta = A^-1 b, per arm (disjoint) or once over
# x (x) e_a (shared). Every rule reads the same model, so all rules learn from every
# feedback. Per-decision and per-update work runs in `noexcept nogil` methods that allocate
# nothing: every scratch vector is allocated with the object.

from libc.stdint cimport int64_t
from syntra_core.rng cimport Stream


cpdef enum LinearStatus:
    LINEAR_OK = 0
    LINEAR_BAD_ARM = 1
    LINEAR_NOT_FINITE = 2      # a feature or the reward is NaN or infinite
    LINEAR_TOO_LARGE = 3       # a feature or the reward is beyond the documented limits
    LINEAR_UNSTABLE = 4        # the update would leave the model non-finite


cdef class LinearModel:
    cdef readonly int dim                # d: length of the context vector x
    cdef readonly int n_arms
    cdef readonly int embedding_dim      # m; 0 for the disjoint variant
    cdef readonly int model_dim          # p: d (disjoint) or d * m (shared)
    cdef readonly bint shared
    cdef readonly double ridge           # lambda of the prior A = lambda I
    cdef readonly int64_t reinvert_every # exact re-inversion period in updates; 0 = never
    cdef readonly int64_t reinversions   # exact re-inversions done so far
    cdef int n_models                    # n_arms (disjoint) or 1 (shared)
    cdef double* _a                      # n_models x p x p, row-major
    cdef double* _a_inv                  # n_models x p x p, row-major
    cdef double* _b                      # n_models x p
    cdef double* _theta                  # n_models x p, kept equal to A^-1 b
    cdef int64_t* _arm_updates           # n_arms: updates per arm
    cdef int64_t* _model_updates         # n_models: drives the re-inversion schedule
    cdef double* _embeddings             # n_arms x m (shared only)
    cdef double* _phi                    # p: scratch for x (x) e_a
    cdef double* _projected              # p: scratch for A^-1 phi
    cdef double* _factor                 # p x p: Cholesky workspace

    cdef const double* features_for(self, const double* x, int arm) noexcept nogil
    cdef double mean_c(self, const double* x, int arm) noexcept nogil
    cdef double mean_and_variance_c(self, const double* x, int arm, double* variance) noexcept nogil
    cdef LinearStatus update_c(self, int arm, const double* x, double reward) noexcept nogil
    cdef bint reinvert_c(self, int model) noexcept nogil
    cdef void reset_c(self) noexcept nogil


cdef class LinearRule:
    cdef readonly LinearModel model
    cdef double* _scores                 # n_arms scratch
    cdef double* _probabilities          # n_arms scratch for select_c
    cdef void distribution_c(self, const double* x, Stream* st, double* out) noexcept nogil
    cdef int select_c(self, const double* x, Stream* st, double* propensity) noexcept nogil
    cdef void predict_c(self, const double* x, double* mean_out) noexcept nogil


cdef class LinUCB(LinearRule):
    cdef readonly double alpha
    cdef int best_arms(self, const double* x) noexcept nogil


cdef class LinTS(LinearRule):
    cdef readonly double v
    cdef readonly int samples
    cdef double* _deviations             # n_arms scratch
