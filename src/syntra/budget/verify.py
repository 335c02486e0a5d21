"""The conservation check every budget arena must pass when no operation is in flight.

It reads account and reservation snapshots, so it works the same over the Cython arena and
the atomics2 one (``syntra budget verify`` uses the latter on a live arena).
"""

from __future__ import annotations

from collections.abc import Iterable

from syntra_core.budget import AccountState, ReservationState


def check_invariants(accounts: Iterable[AccountState], holds: Iterable[ReservationState]) -> list[str]:
    """Every violation, first found first; an empty list when the arena is sound.

    For each account: remaining + reserved + committed == initial + top-ups; no field is
    negative; reserved is within the exposure cap and equals the sum of the account's open
    holds. A hold on an account that is not open is a violation too.
    """
    accounts = list(accounts)
    held: dict[int, int] = {}
    known = {a.index for a in accounts}
    problems = []
    for h in holds:
        if h.account not in known:
            problems.append(f"reservation {h.id} holds {h.amount} on account {h.account}, which is not open")
        held[h.account] = held.get(h.account, 0) + h.amount
    for a in accounts:
        where = f"account {a.name!r} (index {a.index})"
        funded = a.initial + a.topped_up
        total = a.remaining + a.reserved + a.committed
        if total != funded:
            problems.append(
                f"{where}: remaining {a.remaining} + reserved {a.reserved} + committed {a.committed}"
                f" = {total}, but initial {a.initial} + top-ups {a.topped_up} = {funded}"
            )
        for field in ("remaining", "reserved", "committed", "topped_up"):
            if getattr(a, field) < 0:
                problems.append(f"{where}: {field} is negative ({getattr(a, field)})")
        if a.reserved > a.exposure_cap:
            problems.append(f"{where}: reserved {a.reserved} exceeds the exposure cap {a.exposure_cap}")
        if a.reserved != held.get(a.index, 0):
            problems.append(
                f"{where}: reserved is {a.reserved}, its open reservations sum to {held.get(a.index, 0)}"
            )
    return problems
