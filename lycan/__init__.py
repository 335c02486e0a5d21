"""Lycan, the capsule language.

Lycan programs compute from a decision's input (forecasts, percentiles, z-scores, sandboxed
reads) before a ``choice`` node hands the pick to Syntra's learning layer. This package does
not depend on ``syntra`` or ``syntra_core``.
"""

__version__ = "0.1.0"
