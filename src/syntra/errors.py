"""Typed errors raised by the engine.

Every error is a :class:`SyntraError`, and also derives from the builtin exception a Python
caller would expect (``ValueError`` for bad input, ``LookupError`` for unknown ids), so
``except ValueError`` keeps working. The gRPC service maps each to a canonical status code.
"""


class SyntraError(Exception):
    """Base class of every error Syntra raises on purpose."""


class InvalidName(SyntraError, ValueError):
    """A resource name is not ``tenants/{t}/jobs/{j}/capsules/{c}`` with valid parts."""


class InvalidConfig(SyntraError, ValueError):
    """A capsule's options, reward spec or algorithm settings are invalid."""


class InvalidContext(SyntraError, ValueError):
    """A decision's context is missing, of the wrong type or too large."""


class UnknownCapsule(SyntraError, LookupError):
    """No capsule is installed under this name."""

    def __init__(self, name: str):
        super().__init__(f"no capsule named {name!r}")
        self.name = name


class CapsuleExists(SyntraError):
    """A capsule is already installed under this name."""

    def __init__(self, name: str):
        super().__init__(f"capsule {name!r} is already installed")
        self.name = name


class UnknownDecision(SyntraError, LookupError):
    """The decision id was never issued by this capsule, or is malformed."""

    def __init__(self, capsule: str, decision_id: object, detail: str = ""):
        message = f"capsule {capsule!r} issued no decision {decision_id!r}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.capsule = capsule
        self.decision_id = decision_id


class DuplicateFeedback(SyntraError):
    """Feedback for this decision was already applied; it was not applied again."""

    def __init__(self, capsule: str, decision_id: str):
        super().__init__(
            f"decision {decision_id!r} of capsule {capsule!r} already has feedback"
        )
        self.capsule = capsule
        self.decision_id = decision_id


class FeedbackExpired(DuplicateFeedback):
    """The decision's reward wait ran out and it got the default reward; late feedback is
    not applied."""

    def __init__(self, capsule: str, decision_id: str, expired_at_ns: int):
        SyntraError.__init__(
            self,
            f"decision {decision_id!r} of capsule {capsule!r} got its default reward at"
            f" {expired_at_ns} ns (its reward wait ran out); late feedback is not applied",
        )
        self.capsule = capsule
        self.decision_id = decision_id
        self.expired_at_ns = expired_at_ns


class FailedPrecondition(SyntraError):
    """The capsule is not in a state the operation applies to (freezing a frozen capsule)."""


class InvalidReward(SyntraError, ValueError):
    """A reward is not finite, or not allowed by the capsule's reward spec."""


class ProgramError(SyntraError):
    """A capsule's Lycan program failed on this input (an error, or a limit it ran into).

    ``cause`` is the Lycan error (or a description). When the program failed after its
    choice node, that decision was turned into a logged refusal.
    """

    def __init__(self, capsule: str, cause: object):
        super().__init__(f"capsule {capsule!r}: its program failed: {cause}")
        self.capsule = capsule
        self.cause = cause


class StorageError(SyntraError):
    """The durable store failed (I/O error, disk full). The engine refuses further work."""


class StorageCorrupt(StorageError):
    """The store on disk is damaged or inconsistent; opening it fails closed."""


class InvalidFeedback(InvalidReward):
    """Feedback names something wrong besides its reward: a taken option or propensity
    that is missing (shadow capsules), not allowed (other capsules), unknown or out of
    range. ``field`` names the argument at fault (``taken_option``, ``taken_propensity``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidArgument(SyntraError, ValueError):
    """An argument that is not a capsule's config, context or reward is invalid: a page
    size, a batch that is not a list, a batch item with unknown fields. ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
