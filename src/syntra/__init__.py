"""Syntra: a self-hosted decision service.

A caller asks a capsule to decide among a fixed set of options for a context, later reports
how the choice worked out, and Syntra learns per context which option wins.

>>> from syntra import Engine
>>> cap = Engine.memory(seed=1).install(
...     "tenants/acme/jobs/retry/capsules/policy", options=["none", "fixed", "backoff"])
>>> cap.decide("checkout").option in {"none", "fixed", "backoff"}
True
"""

from syntra_core.learner import Decision

from syntra.capsule import Capsule, RewardSpec
from syntra.engine import Engine
from syntra.errors import (
    CapsuleExists,
    DuplicateFeedback,
    FailedPrecondition,
    FeedbackExpired,
    InvalidConfig,
    InvalidContext,
    InvalidName,
    InvalidReward,
    SyntraError,
    UnknownCapsule,
    UnknownDecision,
)
from syntra.learning.config import LearningConfig
from syntra.names import CapsuleName

__version__ = "0.1.0"

__all__ = [
    "Capsule",
    "CapsuleExists",
    "CapsuleName",
    "Decision",
    "DuplicateFeedback",
    "Engine",
    "FailedPrecondition",
    "FeedbackExpired",
    "InvalidConfig",
    "InvalidContext",
    "InvalidName",
    "InvalidReward",
    "LearningConfig",
    "RewardSpec",
    "SyntraError",
    "UnknownCapsule",
    "UnknownDecision",
]
