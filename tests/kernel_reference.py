"""A slow, obvious model of ``syntra_core.kernel``: the oracle its tests compare against.

Written from the kernel's documented rules, not from its code. Python integers never
overflow, so every place the rules say a money term saturates is an explicit ``clamp``.
Policies, options and requests are plain dicts keyed by the kernel's field names; a
decision comes back as a dict shaped like ``Decision.to_dict()``.
"""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

GATES = (
    "hard_risk_limit",
    "minimum_confidence",
    "disabled",
    "quality_floor",
    "latency",
    "capability",
    "provider",
    "region",
    "risk_ceiling",
    "budget",
    "non_positive_utility",
)


def clamp(x):
    return max(INT64_MIN, min(INT64_MAX, x))


def ceil_div(a, b):
    return -(-a // b)


def option_cost(option, request):
    input_part = clamp(
        ceil_div(request["input_units"] * option["input_cost_per_million"], 10**6)
    )
    output_part = clamp(
        ceil_div(request["output_units"] * option["output_cost_per_million"], 10**6)
    )
    return clamp(input_part + output_part)


def option_utility(policy, option, request, cost):
    value = request["business_value_microcents"]
    value_term = clamp(value * request["confidence_bps"] * option["quality_bps"] // 10**8)
    risk_term = clamp(
        value * request["risk_bps"] * policy["risk_penalty_multiplier_bps"] // 10**8
    )
    latency_term = clamp(
        option["p95_latency_ms"] * policy["latency_penalty_microcents_per_ms"]
    )
    return clamp(value_term - risk_term - cost - latency_term)


def first_failing_gate(policy, option, request):
    """The name of the first gate rejecting ``option``, or (None, cost, utility)."""
    required_caps = request["required_capabilities"]
    required_regions = request["required_region_mask"]
    checks = (
        ("disabled", not option["enabled"]),
        ("quality_floor", option["quality_bps"] < request["minimum_quality_bps"]),
        ("latency", option["p95_latency_ms"] > request["max_p95_latency_ms"]),
        ("capability", (option["capabilities"] & required_caps) != required_caps),
        ("provider", not (request["allowed_provider_mask"] >> option["provider_id"]) & 1),
        ("region", (option["region_mask"] & required_regions) != required_regions),
        ("risk_ceiling", request["risk_bps"] > option["risk_ceiling_bps"]),
    )
    for gate, fails in checks:
        if fails:
            return gate, None, None
    cost = option_cost(option, request)
    if cost > request["budget_limit_microcents"]:
        return "budget", None, None
    utility = option_utility(policy, option, request, cost)
    if utility <= 0:
        return "non_positive_utility", None, None
    return None, cost, utility


def prescribe(policy, request):
    counts = dict.fromkeys(GATES, 0)
    decision = {
        "sequence": request["sequence"],
        "action": "reject",
        "reason": None,
        "winner_id": None,
        "winner_utility": None,
        "winner_cost": None,
        "runner_up_id": None,
        "runner_up_utility": None,
        "options_evaluated": 0,
        "options_eligible": 0,
    }

    if request["risk_bps"] >= policy["hard_risk_limit_bps"]:
        global_gate = "hard_risk_limit"
    elif request["confidence_bps"] < policy["minimum_confidence_bps"]:
        global_gate = "minimum_confidence"
    else:
        global_gate = None
    if global_gate is not None:
        counts[global_gate] = 1
        decision["reason"] = global_gate
        decision["histogram"] = tuple(counts.values())
        return decision

    eligible = []
    for option in policy["options"]:
        gate, cost, utility = first_failing_gate(policy, option, request)
        if gate is None:
            eligible.append((utility, cost, option))
        else:
            counts[gate] += 1
    eligible.sort(key=lambda e: (-e[0], e[1], -e[2]["quality_bps"], e[2]["option_id"]))

    decision["options_evaluated"] = len(policy["options"])
    decision["options_eligible"] = len(eligible)
    decision["histogram"] = tuple(counts.values())
    if not eligible:
        # Highest count wins; on a tie the gate listed first does.
        decision["reason"] = max(GATES, key=lambda g: (counts[g], -GATES.index(g)))
        return decision

    utility, cost, winner = eligible[0]
    requested = winner["option_id"] == request["requested_option"]
    decision.update(
        action="execute_requested" if requested else "substitute",
        reason="ok",
        winner_id=winner["option_id"],
        winner_utility=utility,
        winner_cost=cost,
    )
    if len(eligible) > 1:
        decision["runner_up_id"] = eligible[1][2]["option_id"]
        decision["runner_up_utility"] = eligible[1][0]
    return decision


# The digest input, version 1, as documented in the kernel's module docstring.

ACTIONS = ("execute_requested", "substitute", "reject")
REASONS = GATES + ("ok",)


def _u(value, size):
    return value.to_bytes(size, "little", signed=False)


def _i64(value):
    return value.to_bytes(8, "little", signed=True)


def encode(policy, request, decision):
    out = [b"syntra.kernel.decision\x00", _u(1, 2)]
    out += [
        _u(policy["hard_risk_limit_bps"], 4),
        _u(policy["minimum_confidence_bps"], 4),
        _u(policy["risk_penalty_multiplier_bps"], 4),
        _i64(policy["latency_penalty_microcents_per_ms"]),
        _u(len(policy["options"]), 4),
    ]
    for o in policy["options"]:
        out += [
            _u(o["option_id"], 4),
            _u(int(o["enabled"]), 1),
            _u(o["quality_bps"], 4),
            _u(o["risk_ceiling_bps"], 4),
            _u(o["p95_latency_ms"], 4),
            _u(o["capabilities"], 8),
            _u(o["provider_id"], 1),
            _u(o["region_mask"], 8),
            _i64(o["input_cost_per_million"]),
            _i64(o["output_cost_per_million"]),
        ]
    r = request
    out += [
        _u(r["sequence"], 8),
        _u(r["requested_option"], 4),
        _u(r["input_units"], 4),
        _u(r["output_units"], 4),
        _i64(r["business_value_microcents"]),
        _i64(r["budget_limit_microcents"]),
        _u(r["risk_bps"], 4),
        _u(r["confidence_bps"], 4),
        _u(r["minimum_quality_bps"], 4),
        _u(r["max_p95_latency_ms"], 4),
        _u(r["required_capabilities"], 8),
        _u(r["allowed_provider_mask"], 8),
        _u(r["required_region_mask"], 8),
    ]
    d = decision
    has_runner_up = d["runner_up_id"] is not None
    out += [
        _u(d["sequence"], 8),
        _u(ACTIONS.index(d["action"]), 1),
        _u(REASONS.index(d["reason"]), 1),
        _u(d["winner_id"] or 0, 4),
        _i64(d["winner_utility"] or 0),
        _i64(d["winner_cost"] or 0),
        _u(int(has_runner_up), 1),
        _u(d["runner_up_id"] or 0, 4),
        _i64(d["runner_up_utility"] or 0),
        _u(d["options_evaluated"], 4),
        _u(d["options_eligible"], 4),
    ]
    out += [_u(count, 4) for count in d["histogram"]]
    return b"".join(out)
