"""ADWIN drift detection: has the stream's mean changed?

ADWIN (ADaptive WINdowing; Bifet and Gavalda, "Learning from Time-Changing Data with
Adaptive Windowing", SIAM International Conference on Data Mining, 2007) keeps the longest
window of recent values that shows no change. After every ``clock`` values it tests each
split of the window into an older part ``W0`` (``n0`` values) and a newer part ``W1``
(``n1`` values): the means differ significantly when

    |mean(W0) - mean(W1)| > sqrt(2 / m * var(W) * d) + 2 / (3 m) * d,

with ``1 / m = 1 / (n0 - L + 1) + 1 / (n1 - L + 1)`` (``L = min_window_length``) and
``d = ln(2 ln(n) / delta)`` for a window of ``n`` values. A significant split means the
distribution changed: the older part is dropped (bucket by bucket, until no split is
significant) and a drift is reported. On a stationary stream each check raises a false
alarm with probability at most ``delta``; a change of the mean by ``eps`` is detected once
about ``ln(1 / delta) / eps**2`` values have arrived since it.

The window is stored as an exponential histogram (the paper's ADWIN2): at most
``max_buckets`` buckets of each size ``2**i``, so a window of ``n`` values costs
O(``max_buckets`` log n) memory and the splits tested per check are as many. The work runs
in :class:`syntra_core.drift.AdwinCore`; this class validates and documents. Detection
positions are the same as those of river's ``drift.ADWIN`` with the same parameters
(``reset_on_drift=True`` for river's habit of emptying the window after a detection).

The engine feeds rewards scaled to [0, 1]; then ``var(W) <= 1/4`` and the bound above
is the paper's.

>>> detector = Adwin()
>>> # 1000 rewards with mean 0.2, then 1000 with mean 0.8.
>>> stream = [float(i % 5 == 0) for i in range(1000)] + [float(i % 5 != 0) for i in range(1000)]
>>> [i for i, reward in enumerate(stream) if detector.update(reward)]
[1055, 1087, 1343]
>>> # Each detection dropped older values; what is left is all after the change.
>>> detector.width, round(detector.estimation, 2)
(976, 0.8)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from syntra_core.drift import MAX_ABS_VALUE, AdwinCore

from syntra.errors import InvalidConfig

__all__ = ["MAX_ABS_VALUE", "Adwin"]


class Adwin:
    """ADWIN change detector over a stream of finite values (see the module docs).

    Parameters
    ----------
    delta
        Confidence, in (0, 1): the bound on the probability of a false alarm per check.
        Smaller means fewer false alarms and later detections.
    clock
        Check for a change every ``clock`` updates (1 checks after every value).
    max_buckets
        Buckets kept of each size before the two oldest merge (the paper's ``M``), 2 to
        1024. More buckets test more splits: finer cuts, more memory and time.
    min_window_length
        Shortest sub-window a split may leave on either side (at least 1).
    grace_period
        No check until the window holds more than this many values.
    reset_on_drift
        False (default): a detection drops only the older sub-window, as in the paper.
        True: the next update starts from an empty window, as river's ``drift.ADWIN`` does.
    """

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5,
                 min_window_length: int = 5, grace_period: int = 10,
                 reset_on_drift: bool = False):
        try:
            self._core = AdwinCore(delta, clock, max_buckets, min_window_length, grace_period,
                                   reset_on_drift)
        except ValueError as error:  # the core checks (it sizes its buffers from them)
            raise InvalidConfig(str(error)) from None

    def __repr__(self) -> str:
        core = self._core
        return (f"Adwin(delta={core.delta!r}, clock={core.clock}, max_buckets={core.max_buckets}, "
                f"min_window_length={core.min_window_length}, grace_period={core.grace_period}, "
                f"reset_on_drift={core.reset_on_drift})")

    def update(self, value: float) -> bool:
        """Add one value; True if it revealed a change (the window was cut).

        ValueError for a value that is not a finite number of magnitude at most
        ``MAX_ABS_VALUE``; the detector is then unchanged.
        """
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"value must be a real number, got {type(value).__name__}")
        value = float(value)
        if not (math.isfinite(value) and abs(value) <= MAX_ABS_VALUE):
            raise ValueError(f"value must be finite with magnitude <= {MAX_ABS_VALUE:g}, got {value!r}")
        return self._core.update(value)

    def update_checked(self, value: float) -> bool:
        """:meth:`update` for a float the caller has already checked (a learner's reward,
        scaled to [0, 1]): the per-reward path skips the wrapper's checks. The core still
        ignores a value that is not finite."""
        return self._core.update(value)

    def feed(self, values: np.ndarray) -> np.ndarray:
        """Update with every value of a 1-D array in one compiled loop.

        Returns the indices (int64) of the values at which a change was detected. If any
        value is not acceptable nothing is applied and ValueError names the first one.
        """
        return self._core.feed(values)

    @property
    def width(self) -> int:
        """Values in the current window."""
        return self._core.width

    @property
    def estimation(self) -> float:
        """Mean of the current window (0.0 when empty)."""
        return self._core.estimation

    @property
    def variance(self) -> float:
        """Population variance of the current window (0.0 when empty).

        River's ``ADWIN.variance`` is the sum of squared deviations; this is that divided
        by ``width``, the quantity its cut test uses.
        """
        return self._core.variance

    @property
    def total(self) -> float:
        """Sum of the values in the current window."""
        return self._core.total

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected a change."""
        return self._core.drift_detected

    @property
    def detections(self) -> int:
        """Changes detected since construction or :meth:`reset`."""
        return self._core.n_detections

    @property
    def n_buckets(self) -> int:
        """Buckets the window is stored in: at most ``max_buckets`` per size."""
        return self._core.n_buckets

    def bucket_counts(self) -> list[int]:
        """Buckets held of each size, single values first (size ``2**i`` at index ``i``)."""
        return self._core.bucket_counts()

    def export_state(self) -> dict[str, Any]:
        """The exact state (plain values and raw bytes), for :meth:`import_state`."""
        return self._core.export_state()

    def import_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`export_state` output bit for bit.

        The parameters must equal this detector's. ValueError, changing nothing, if the
        state is malformed or does not fit.
        """
        self._core.import_state(state)

    def reset(self) -> None:
        """Forget everything: an empty window and no detections."""
        self._core.reset()
