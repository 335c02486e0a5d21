"""syntra_core: the compiled hot path of Syntra.

Nothing here imports ``syntra``. Each module is a ``.pyx`` with a ``.pxd`` beside it, and
modules ``cimport`` each other at C level:

* :mod:`syntra_core.rng`: xoshiro256** streams derived from (seed, sequence), and the
  uniform, normal, gamma and beta distributions.
* :mod:`syntra_core.kernel`: the integer decision kernel (governance gates, utility in
  microcents, ranking, digests).
* :mod:`syntra_core.bandits`: sufficient statistics per context and the decision rules.
* :mod:`syntra_core.linear`: LinUCB and LinTS over feature vectors (disjoint, or shared
  with option embeddings), Sherman–Morrison updates with periodic exact re-inversion.
* :mod:`syntra_core.drift`: ADWIN drift detection over exponential-histogram buckets.
* :mod:`syntra_core.learner`: one capsule's decide/feedback loop and its decision ledger.
* :mod:`syntra_core.wal_format`: the write-ahead log's bytes: frames, segment headers,
  the hash chain, and the verified read side (scan, verify).
* :mod:`syntra_core.wal`: the WAL writer: group commit, rotation, recovery, retention.
* :mod:`syntra_core.budget`: the shared-memory budget arena (lock-free holds and spends).
"""
