"""What every I/O kernel shares: the policy check, the run's time and size limits."""

import time

from lycan.errors import CapabilityError, ExecutionError, LimitExceeded
from lycan.policy import CapabilityDenied
from lycan.values import from_json

_DEFAULT_NESTING, _DEFAULT_LENGTH = 64, 100_000



def _policy(context, kernel):
    policy = getattr(context, "policy", None)
    if policy is None:
        raise CapabilityDenied(kernel, "no policy was given, and every I/O capability is denied "
                                       "by default (run with a policy that grants it)")
    return policy


def _seconds_left(context, kernel, own_limit, own_name):
    """(seconds, which limit binds): the kernel's own limit, or what is left of the run."""
    deadline = getattr(context, "deadline", None)
    if deadline is None:
        return own_limit, own_name
    left = deadline - time.monotonic()
    if left <= 0:
        raise LimitExceeded("max_seconds", f"{kernel}: the run has no time left (max_seconds)")
    return (left, "max_seconds") if left < own_limit else (own_limit, own_name)


def _limits(context):
    limits = getattr(context, "limits", None)
    if limits is None:
        return _DEFAULT_NESTING, _DEFAULT_LENGTH, _DEFAULT_LENGTH
    return limits.max_nesting, limits.max_array_length, limits.max_string_length


def _checked_text(context, kernel, text):
    longest = _limits(context)[2]
    if len(text) > longest:
        raise LimitExceeded("max_string_length",
                            f"{kernel}: a result string of {len(text)} characters is longer than "
                            f"max_string_length {longest}")
    return text


def _to_lycan(context, kernel, data):
    nesting, length, longest = _limits(context)
    try:
        return from_json(data, nesting, length, longest)
    except ExecutionError as error:
        raise CapabilityError(kernel, "result", f"does not fit the run's limits: {error.reason}") from None
