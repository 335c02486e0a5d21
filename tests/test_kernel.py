"""Tests for syntra_core.kernel, mostly against the Python model in kernel_reference."""

import itertools
import math

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import kernel_reference as ref
from syntra_core import kernel
from syntra_core.kernel import (
    DECISION_DTYPE,
    GATES,
    MAX_OPTIONS,
    REQUEST_DTYPE,
    Decision,
    Option,
    PolicyError,
    PolicySnapshot,
    Request,
    RequestError,
    decision_digest,
    decisions_from_batch,
    prescribe,
    prescribe_batch,
    request_array,
    verify,
)

I64_MIN, I64_MAX = ref.INT64_MIN, ref.INT64_MAX
U32_MAX, U64_MAX = 2**32 - 1, 2**64 - 1


# ---------------------------------------------------------------------------------------
# Specs are plain dicts: the reference reads them directly, the kernel via the builders.


def option_spec(option_id=1, **fields):
    spec = dict(
        option_id=option_id,
        enabled=True,
        quality_bps=8000,
        risk_ceiling_bps=5000,
        p95_latency_ms=500,
        capabilities=0,
        provider_id=0,
        region_mask=0,
        input_cost_per_million=1_000_000,
        output_cost_per_million=4_000_000,
    )
    spec.update(fields)
    return spec


def policy_spec(options, **fields):
    spec = dict(
        options=list(options),
        hard_risk_limit_bps=9000,
        minimum_confidence_bps=1000,
        risk_penalty_multiplier_bps=10_000,
        latency_penalty_microcents_per_ms=10,
    )
    spec.update(fields)
    return spec


def request_spec(**fields):
    spec = dict(
        sequence=1,
        requested_option=1,
        input_units=1000,
        output_units=1000,
        business_value_microcents=1_000_000,
        budget_limit_microcents=1_000_000,
        risk_bps=1000,
        confidence_bps=9000,
        minimum_quality_bps=0,
        max_p95_latency_ms=10_000,
        required_capabilities=0,
        allowed_provider_mask=U64_MAX,
        required_region_mask=0,
    )
    spec.update(fields)
    return spec


def build_policy(spec):
    options = [Option(**o) for o in spec["options"]]
    return PolicySnapshot(options, **{k: v for k, v in spec.items() if k != "options"})


def decide(pspec, rspec):
    """Run the kernel and the reference on the same specs; they must agree."""
    decision = prescribe(build_policy(pspec), Request(**rspec))
    assert decision.to_dict() == ref.prescribe(pspec, rspec)
    return decision


# ---------------------------------------------------------------------------------------
# Property test against the reference.


def mostly(benign, wild):
    """Three draws in four from ``benign``, one from ``wild``, which reaches the extremes.

    An option survives only if nine gates agree, so fully random fields would reject
    almost everything and leave ranking and utility untested. Shrinks toward benign.
    """
    return st.integers(0, 3).flatmap(lambda k: wild if k == 3 else benign)


any_bps = st.one_of(st.sampled_from([0, 1, 9999, 10_000]), st.integers(0, 10_000))
any_u32 = st.one_of(st.sampled_from([0, U32_MAX]), st.integers(0, U32_MAX))
any_u64 = st.one_of(st.sampled_from([0, U64_MAX]), st.integers(0, 15),
                    st.integers(0, U64_MAX))
any_price = st.one_of(st.sampled_from([0, I64_MAX]), st.integers(0, I64_MAX))
any_money = st.one_of(
    st.sampled_from([I64_MIN, -1, 0, 1, I64_MAX]),
    st.integers(2**40, I64_MAX),
    st.integers(I64_MIN, -(2**40)),
    st.integers(I64_MIN, I64_MAX),
)


@st.composite
def policies(draw):
    def one_option(option_id):
        return dict(
            option_id=option_id,
            enabled=draw(mostly(st.just(True), st.booleans())),
            quality_bps=draw(mostly(st.integers(5000, 10_000), any_bps)),
            risk_ceiling_bps=draw(mostly(st.integers(2000, 10_000), any_bps)),
            p95_latency_ms=draw(mostly(st.integers(0, 1000), any_u32)),
            capabilities=draw(mostly(st.integers(0, 15), any_u64)),
            provider_id=draw(mostly(st.integers(0, 3), st.integers(0, 63))),
            region_mask=draw(mostly(st.integers(0, 15), any_u64)),
            input_cost_per_million=draw(mostly(st.integers(0, 10**7), any_price)),
            output_cost_per_million=draw(mostly(st.integers(0, 10**7), any_price)),
        )

    ids = draw(st.lists(st.integers(0, U32_MAX), min_size=1, max_size=20, unique=True))
    options = [one_option(i) for i in ids]
    # Clones under a new id tie on every ranking key but the id.
    for clone_id in draw(st.lists(st.integers(0, U32_MAX), max_size=3, unique=True)):
        if clone_id not in ids and len(options) < 20:
            ids.append(clone_id)
            options.append(dict(draw(st.sampled_from(options)), option_id=clone_id))
    if not any(o["enabled"] for o in options):
        options[0]["enabled"] = True
    return dict(
        options=options,
        hard_risk_limit_bps=draw(mostly(st.integers(5000, 10_000), any_bps)),
        minimum_confidence_bps=draw(mostly(st.integers(0, 5000), any_bps)),
        risk_penalty_multiplier_bps=draw(mostly(
            st.integers(0, 10_000),
            st.one_of(st.sampled_from([0, 100_000]), st.integers(0, 100_000)),
        )),
        latency_penalty_microcents_per_ms=draw(mostly(st.integers(0, 1000), any_price)),
    )


@st.composite
def requests_for(draw, pspec):
    return dict(
        sequence=draw(st.integers(0, U64_MAX)),
        requested_option=draw(st.sampled_from([o["option_id"] for o in pspec["options"]])),
        input_units=draw(mostly(st.integers(0, 100_000), any_u32)),
        output_units=draw(mostly(st.integers(0, 100_000), any_u32)),
        # The value drives every money term, so it is extreme half the time.
        business_value_microcents=draw(st.one_of(st.integers(10**6, 10**12), any_money)),
        budget_limit_microcents=draw(mostly(st.integers(10**7, 10**13), any_price)),
        risk_bps=draw(mostly(st.integers(0, 3000), any_bps)),
        confidence_bps=draw(mostly(st.integers(7000, 10_000), any_bps)),
        minimum_quality_bps=draw(mostly(st.integers(0, 5000), any_bps)),
        max_p95_latency_ms=draw(mostly(st.integers(1000, 10**6), any_u32)),
        required_capabilities=draw(mostly(st.just(0), any_u64)),
        allowed_provider_mask=draw(mostly(st.just(U64_MAX), any_u64)),
        required_region_mask=draw(mostly(st.just(0), any_u64)),
    )


@st.composite
def cases(draw):
    pspec = draw(policies())
    return pspec, draw(requests_for(pspec))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_prescribe_matches_reference(case):
    pspec, rspec = case
    decide(pspec, rspec)


@pytest.mark.parametrize(
    "outcome",
    [
        lambda d: d["action"] == "execute_requested",
        lambda d: d["action"] == "substitute" and d["runner_up_id"] is not None,
        lambda d: d["winner_utility"] is not None and d["winner_utility"] > 2**40,
        lambda d: d["reason"] == "budget",
        lambda d: d["reason"] == "hard_risk_limit",
    ],
    ids=["execute", "substitute_with_runner_up", "huge_utility", "budget", "global"],
)
def test_random_cases_reach_outcome(outcome):
    """Guards the property test: its inputs do reach winners, rejects and extremes."""
    find(cases(), lambda case: outcome(ref.prescribe(*case)),
         settings=settings(max_examples=1000, phases=[Phase.generate], database=None))


# ---------------------------------------------------------------------------------------
# Extreme inputs.


def test_extreme_grid_matches_reference():
    values = [I64_MIN, -1, 0, 1, I64_MAX]
    units = [0, 1, U32_MAX]
    prices = [0, 1, 999_999, 1_000_000, I64_MAX]
    grid = itertools.product(values, units, units, prices, prices, [0, 9999], [0, 100_000])
    for value, in_units, out_units, in_price, out_price, risk, multiplier in grid:
        pspec = policy_spec(
            [
                option_spec(1, quality_bps=10_000, risk_ceiling_bps=10_000,
                            input_cost_per_million=in_price,
                            output_cost_per_million=out_price,
                            capabilities=U64_MAX, region_mask=U64_MAX, provider_id=63),
                option_spec(2, quality_bps=0, risk_ceiling_bps=10_000,
                            p95_latency_ms=U32_MAX, input_cost_per_million=out_price,
                            output_cost_per_million=in_price,
                            capabilities=U64_MAX, region_mask=U64_MAX),
            ],
            hard_risk_limit_bps=10_000,
            minimum_confidence_bps=0,
            risk_penalty_multiplier_bps=multiplier,
            latency_penalty_microcents_per_ms=1,
        )
        rspec = request_spec(
            input_units=in_units, output_units=out_units, business_value_microcents=value,
            budget_limit_microcents=I64_MAX, risk_bps=risk, confidence_bps=10_000,
            max_p95_latency_ms=U32_MAX, required_capabilities=U64_MAX,
            required_region_mask=U64_MAX,
        )
        decide(pspec, rspec)


def test_risk_bonus_on_negative_value_saturates_to_int64_max():
    # V = int64 min with a 10x risk multiplier: the risk term is about -10 * 2**63 and
    # clamps to int64 min, so value 0 minus it is 2**63, one past int64 max.
    pspec = policy_spec([option_spec(1, risk_ceiling_bps=10_000, input_cost_per_million=0,
                                     output_cost_per_million=0, p95_latency_ms=0)],
                        hard_risk_limit_bps=10_000, minimum_confidence_bps=0,
                        risk_penalty_multiplier_bps=100_000)
    rspec = request_spec(business_value_microcents=I64_MIN, risk_bps=9999, confidence_bps=0)
    decision = decide(pspec, rspec)
    assert decision.winner_utility == I64_MAX


def test_saturated_cost_is_exactly_int64_max():
    # u32-max units at the maximum price: both cost parts clamp, and so does their sum.
    # As above the risk term clamps to int64 min, a bonus of exactly 2**63, so the
    # utility is 2**63 - (2**63 - 1) = 1: the terms are summed exactly, then clamped.
    pspec = policy_spec([option_spec(1, risk_ceiling_bps=10_000, p95_latency_ms=0,
                                     input_cost_per_million=I64_MAX,
                                     output_cost_per_million=I64_MAX)],
                        hard_risk_limit_bps=10_000, minimum_confidence_bps=0,
                        risk_penalty_multiplier_bps=100_000)
    rspec = request_spec(input_units=U32_MAX, output_units=U32_MAX,
                         business_value_microcents=I64_MIN, budget_limit_microcents=I64_MAX,
                         risk_bps=9999, confidence_bps=0)
    decision = decide(pspec, rspec)
    assert decision.winner_cost == I64_MAX
    assert decision.winner_utility == 1


def test_maximum_value_is_kept_exactly():
    pspec = policy_spec([option_spec(1, quality_bps=10_000, input_cost_per_million=0,
                                     output_cost_per_million=0, p95_latency_ms=0)],
                        risk_penalty_multiplier_bps=0)
    decision = decide(pspec, request_spec(business_value_microcents=I64_MAX,
                                          confidence_bps=10_000))
    assert decision.winner_utility == I64_MAX


def test_saturated_latency_penalty_rejects_without_error():
    pspec = policy_spec([option_spec(1, p95_latency_ms=U32_MAX)],
                        latency_penalty_microcents_per_ms=I64_MAX)
    decision = decide(pspec, request_spec(business_value_microcents=I64_MAX,
                                          max_p95_latency_ms=U32_MAX))
    assert decision.reason == "non_positive_utility"


def test_floor_of_negative_value_rounds_toward_minus_infinity():
    # Value term: -100 * 10000 * 5001 / 10**8 = -50.01, floored to -51 (truncation: -50).
    # Risk term: -100 * 5000 * 100000 / 10**8 = -500 exactly, a bonus that keeps the
    # utility positive so the value term shows.
    pspec = policy_spec([option_spec(1, quality_bps=5001, input_cost_per_million=0,
                                     output_cost_per_million=0, p95_latency_ms=0)],
                        risk_penalty_multiplier_bps=100_000)
    decision = decide(pspec, request_spec(business_value_microcents=-100, risk_bps=5000,
                                          confidence_bps=10_000))
    assert decision.winner_utility == 449


def test_ceil_of_a_cost_beyond_64_bits():
    # units * price passes 2**64, so the cost takes the 128-bit path, yet the cost fits.
    units, price = U32_MAX, 2**33 + 1
    assert units * price >= 2**64 and (units * price) % 10**6
    pspec = policy_spec([option_spec(1, quality_bps=10_000, p95_latency_ms=0,
                                     input_cost_per_million=price,
                                     output_cost_per_million=0)],
                        risk_penalty_multiplier_bps=0)
    decision = decide(pspec, request_spec(input_units=units, output_units=0,
                                          business_value_microcents=I64_MAX,
                                          budget_limit_microcents=I64_MAX,
                                          confidence_bps=10_000))
    assert decision.winner_cost == -(-units * price // 10**6)


@pytest.mark.parametrize(
    "value, confidence, risk, multiplier",
    [
        # The value term's product overflows int64; the risk term saturates to a bonus.
        (-(2**62 + 1), 9999, 9999, 100_000),
        # The risk term's product overflows int64 yet its quotient fits; no value term.
        (-(2**60 + 1), 0, 9999, 10_001),
    ],
)
def test_floor_of_a_product_beyond_64_bits(value, confidence, risk, multiplier):
    # These products take the 128-bit path; their quotients must be floored, and a
    # negative value with a large risk penalty leaves a positive utility that shows it.
    pspec = policy_spec([option_spec(1, quality_bps=10_000, risk_ceiling_bps=10_000,
                                     input_cost_per_million=0, output_cost_per_million=0,
                                     p95_latency_ms=0)],
                        hard_risk_limit_bps=10_000, minimum_confidence_bps=0,
                        risk_penalty_multiplier_bps=multiplier)
    decision = decide(pspec, request_spec(business_value_microcents=value, risk_bps=risk,
                                          confidence_bps=confidence))
    value_term = value * confidence * 10_000 // 10**8
    risk_term = max(I64_MIN, value * risk * multiplier // 10**8)
    assert decision.winner_utility == value_term - risk_term
    assert any(n % 10**8 for n in (value * confidence * 10_000, value * risk * multiplier))


# ---------------------------------------------------------------------------------------
# Gates, histogram and ranking on hand-built cases.


def test_ranking_prefers_utility():
    pspec = policy_spec([option_spec(1, quality_bps=6000),
                         option_spec(2, quality_bps=9000)])
    decision = decide(pspec, request_spec(business_value_microcents=10**8))
    assert (decision.winner_id, decision.runner_up_id) == (2, 1)
    assert decision.winner_utility > decision.runner_up_utility
    assert decision.action == "substitute"


def test_equal_utility_goes_to_lower_cost():
    # Option 1 earns 10**7 more value at exactly 10**7 more cost.
    pspec = policy_spec(
        [option_spec(1, quality_bps=8000, input_cost_per_million=10**7 + 1_000_000),
         option_spec(2, quality_bps=7000, input_cost_per_million=1_000_000)],
        risk_penalty_multiplier_bps=0,
    )
    decision = decide(pspec, request_spec(business_value_microcents=10**8,
                                          confidence_bps=10_000, input_units=10**6,
                                          budget_limit_microcents=10**8))
    assert decision.winner_utility == decision.runner_up_utility
    assert (decision.winner_id, decision.runner_up_id) == (2, 1)


def test_equal_utility_and_cost_goes_to_higher_quality():
    # Option 2 earns 10**7 more value but loses it to 10**4 ms of extra latency at 1000/ms.
    pspec = policy_spec(
        [option_spec(1, quality_bps=7000, p95_latency_ms=500),
         option_spec(2, quality_bps=8000, p95_latency_ms=10_500)],
        latency_penalty_microcents_per_ms=1000,
    )
    decision = decide(pspec, request_spec(business_value_microcents=10**8,
                                          confidence_bps=10_000, max_p95_latency_ms=20_000))
    assert decision.winner_utility == decision.runner_up_utility
    assert decision.winner_cost == 5000
    assert (decision.winner_id, decision.runner_up_id) == (2, 1)


def test_full_tie_goes_to_lower_option_id_whatever_the_catalog_order():
    pspec = policy_spec([option_spec(9), option_spec(3), option_spec(5)])
    decision = decide(pspec, request_spec(requested_option=9))
    assert (decision.winner_id, decision.runner_up_id) == (3, 5)
    assert decision.options_eligible == 3


def test_requested_option_wins():
    pspec = policy_spec([option_spec(1, quality_bps=9000),
                         option_spec(2, quality_bps=6000)])
    decision = decide(pspec, request_spec(requested_option=1))
    assert decision.action == "execute_requested"
    assert decision.reason == "ok"


def test_ineligible_requested_option_is_substituted():
    pspec = policy_spec([option_spec(1, enabled=False), option_spec(2)])
    decision = decide(pspec, request_spec(requested_option=1))
    assert (decision.action, decision.winner_id) == ("substitute", 2)
    assert decision.runner_up_id is None
    assert decision.runner_up_utility is None


def counts(**by_gate):
    return tuple(by_gate.get(gate, 0) for gate in GATES)


def test_each_option_gate_counts_once_in_order():
    # Option k fails gate k and passes every gate before it.
    options = [
        option_spec(1, enabled=False, quality_bps=0),                  # disabled
        option_spec(2, quality_bps=100, p95_latency_ms=10**6),         # quality_floor
        option_spec(3, p95_latency_ms=20_000, capabilities=0),         # latency
        option_spec(4, capabilities=0b01, provider_id=5),              # capability
        option_spec(5, capabilities=0b11, provider_id=5),              # provider
        option_spec(6, capabilities=0b11, region_mask=0b10),           # region
        option_spec(7, capabilities=0b11, region_mask=0b11, risk_ceiling_bps=500),  # risk
        option_spec(8, capabilities=0b11, region_mask=0b11,
                    input_cost_per_million=10**12),                    # budget
        option_spec(9, capabilities=0b11, region_mask=0b11, quality_bps=1000),  # utility
        option_spec(10, capabilities=0b11, region_mask=0b11),          # eligible
    ]
    rspec = request_spec(requested_option=10, minimum_quality_bps=1000,
                         required_capabilities=0b11, required_region_mask=0b01,
                         allowed_provider_mask=~(1 << 5) & U64_MAX,
                         business_value_microcents=10**7)
    decision = decide(policy_spec(options), rspec)
    assert decision.histogram == counts(
        disabled=1, quality_floor=1, latency=1, capability=1, provider=1, region=1,
        risk_ceiling=1, budget=1, non_positive_utility=1,
    )
    assert (decision.action, decision.winner_id) == ("execute_requested", 10)
    assert (decision.options_evaluated, decision.options_eligible) == (10, 1)


def test_reject_names_the_dominant_gate():
    options = [option_spec(1, p95_latency_ms=10**6), option_spec(2, quality_bps=100),
               option_spec(3, quality_bps=100)]
    decision = decide(policy_spec(options), request_spec(minimum_quality_bps=1000))
    assert decision.action == "reject"
    assert decision.reason == "quality_floor"
    assert decision.histogram == counts(quality_floor=2, latency=1)
    assert decision.winner_id is decision.winner_utility is decision.winner_cost is None


def test_dominant_gate_tie_goes_to_the_earlier_gate():
    too_dear, too_poor = dict(input_cost_per_million=10**12), dict(quality_bps=100)
    options = [option_spec(1, **too_dear), option_spec(2, **too_poor),
               option_spec(3, **too_dear), option_spec(4, **too_poor)]
    decision = decide(policy_spec(options), request_spec(minimum_quality_bps=1000))
    assert decision.histogram == counts(quality_floor=2, budget=2)
    assert decision.reason == "quality_floor"


@pytest.mark.parametrize(
    "policy_fields, request_fields, gate",
    [
        ({"hard_risk_limit_bps": 3000}, {"risk_bps": 3000}, "hard_risk_limit"),
        ({"hard_risk_limit_bps": 0}, {"risk_bps": 0}, "hard_risk_limit"),
        ({"minimum_confidence_bps": 5000}, {"confidence_bps": 4999}, "minimum_confidence"),
        # Both fail: the hard risk limit is checked first and is the only count.
        ({"hard_risk_limit_bps": 10, "minimum_confidence_bps": 5000},
         {"risk_bps": 10, "confidence_bps": 0}, "hard_risk_limit"),
    ],
)
def test_global_gates_reject_before_options(policy_fields, request_fields, gate):
    decision = decide(policy_spec([option_spec(1)], **policy_fields),
                      request_spec(**request_fields))
    assert (decision.action, decision.reason) == ("reject", gate)
    assert decision.histogram == counts(**{gate: 1})
    assert (decision.options_evaluated, decision.options_eligible) == (0, 0)


def test_global_gate_boundaries_admit():
    pspec = policy_spec([option_spec(1)], hard_risk_limit_bps=3000,
                        minimum_confidence_bps=5000)
    decision = decide(pspec, request_spec(risk_bps=2999, confidence_bps=5000))
    assert decision.action == "execute_requested"


# ---------------------------------------------------------------------------------------
# Validation at the boundary.


@pytest.mark.parametrize(
    "field, value",
    [
        ("option_id", -1), ("option_id", 2**32), ("option_id", 1.0),
        ("quality_bps", 10_001), ("quality_bps", -1), ("quality_bps", math.nan),
        ("quality_bps", 5000.0), ("quality_bps", True),
        ("risk_ceiling_bps", 10_001), ("risk_ceiling_bps", math.inf),
        ("p95_latency_ms", -1), ("p95_latency_ms", 2**32),
        ("capabilities", -1), ("capabilities", 2**64),
        ("provider_id", 64), ("provider_id", -1),
        ("region_mask", 2**64),
        ("input_cost_per_million", -1), ("input_cost_per_million", 2**63),
        ("output_cost_per_million", -1), ("output_cost_per_million", -math.inf),
        ("enabled", 1), ("enabled", "yes"),
    ],
)
def test_option_errors_name_the_field(field, value):
    spec = option_spec(**{field: value})
    with pytest.raises(PolicyError, match=field):
        build_policy(policy_spec([spec]))


@pytest.mark.parametrize(
    "field, value",
    [
        ("hard_risk_limit_bps", 10_001), ("hard_risk_limit_bps", -1),
        ("minimum_confidence_bps", 10_001), ("minimum_confidence_bps", 0.5),
        ("risk_penalty_multiplier_bps", 100_001), ("risk_penalty_multiplier_bps", -1),
        ("latency_penalty_microcents_per_ms", -1),
        ("latency_penalty_microcents_per_ms", math.nan),
    ],
)
def test_policy_errors_name_the_field(field, value):
    with pytest.raises(PolicyError, match=field):
        build_policy(policy_spec([option_spec(1)], **{field: value}))


def test_policy_accepts_the_documented_extremes():
    policy = build_policy(policy_spec([option_spec(1)], hard_risk_limit_bps=10_000,
                                      risk_penalty_multiplier_bps=100_000,
                                      latency_penalty_microcents_per_ms=I64_MAX))
    assert policy.risk_penalty_multiplier_bps == 100_000


@pytest.mark.parametrize(
    "options, message",
    [
        ([], "options must not be empty"),
        ([option_spec(1), option_spec(2), option_spec(1)],
         r"options\[2\] repeats option_id 1"),
        ([option_spec(i) for i in range(MAX_OPTIONS + 1)], "options must hold at most 256"),
        ([option_spec(1, enabled=False), option_spec(2, enabled=False)],
         "options must include at least one enabled option"),
    ],
)
def test_catalog_errors(options, message):
    with pytest.raises(PolicyError, match=message):
        build_policy(policy_spec(options))


def test_catalog_rejects_non_options():
    with pytest.raises(PolicyError, match=r"options\[1\] must be an Option"):
        PolicySnapshot([Option(1, quality_bps=1, risk_ceiling_bps=1, p95_latency_ms=1), 2],
                       hard_risk_limit_bps=1, minimum_confidence_bps=1,
                       risk_penalty_multiplier_bps=1, latency_penalty_microcents_per_ms=1)


def test_full_catalog_is_accepted_and_exposed():
    specs = [option_spec(i, quality_bps=i % 10_001) for i in range(MAX_OPTIONS)]
    policy = build_policy(policy_spec(specs))
    assert len(policy) == MAX_OPTIONS
    assert [o.option_id for o in policy.options] == list(range(MAX_OPTIONS))
    assert policy.options[7] == Option(**specs[7])
    decide(policy_spec(specs), request_spec(requested_option=3))


def test_numpy_integers_are_accepted():
    option = Option(np.uint32(4), quality_bps=np.int64(10), risk_ceiling_bps=np.uint16(5),
                    p95_latency_ms=np.int32(3))
    assert (option.option_id, option.quality_bps) == (4, 10)
    assert type(option.option_id) is int


@pytest.mark.parametrize(
    "field, value",
    [
        ("sequence", -1), ("sequence", 2**64),
        ("requested_option", 2**32), ("requested_option", -1),
        ("input_units", -1), ("input_units", 2**32), ("output_units", -5),
        ("output_units", 1.5),
        ("business_value_microcents", 2**63), ("business_value_microcents", -(2**63) - 1),
        ("business_value_microcents", math.nan), ("business_value_microcents", math.inf),
        ("budget_limit_microcents", -1), ("budget_limit_microcents", 2**63),
        ("risk_bps", 10_001), ("risk_bps", -1), ("confidence_bps", 10_001),
        ("confidence_bps", math.nan), ("minimum_quality_bps", 10_001),
        ("max_p95_latency_ms", -1), ("max_p95_latency_ms", 2**32),
        ("required_capabilities", -1), ("allowed_provider_mask", 2**64),
        ("required_region_mask", "0"),
    ],
)
def test_request_errors_name_the_field(field, value):
    with pytest.raises(RequestError, match=field):
        Request(**request_spec(**{field: value}))


def test_unknown_requested_option_is_a_request_error():
    policy = build_policy(policy_spec([option_spec(1)]))
    with pytest.raises(RequestError, match="requested_option .* got 2"):
        prescribe(policy, Request(**request_spec(requested_option=2)))


def test_errors_are_value_errors():
    assert issubclass(PolicyError, ValueError) and issubclass(RequestError, ValueError)


# ---------------------------------------------------------------------------------------
# Decision objects.


def test_decision_value_semantics():
    pspec = policy_spec([option_spec(1), option_spec(2, quality_bps=9000)])
    a = decide(pspec, request_spec())
    b = prescribe(build_policy(pspec), Request(**request_spec()))
    assert a == b and hash(a) == hash(b)
    assert a != a.replace(sequence=2)
    assert a == Decision(**a.to_dict())
    assert "action='substitute'" in repr(a) and "winner_id=2" in repr(a)
    with pytest.raises(AttributeError):
        a.winner_id = 1


@pytest.mark.parametrize(
    "changes",
    [
        {"action": "reject"},                              # a reject carries no winner
        {"reason": "budget"},                              # only a reject has a gate reason
        {"runner_up_id": None},                            # id and utility go together
        {"histogram": (0,) * 3},
        {"action": "maybe"},
        {"winner_utility": 2**63},
    ],
)
def test_decision_constructor_refuses_inconsistent_fields(changes):
    decision = decide(policy_spec([option_spec(1), option_spec(2)]), request_spec())
    with pytest.raises(ValueError):
        decision.replace(**changes)


def test_from_record_refuses_invalid_codes():
    record = np.zeros(1, dtype=DECISION_DTYPE)
    record["action"] = 7
    with pytest.raises(ValueError, match="invalid codes"):
        Decision.from_record(record[0])
    record["action"] = 2  # a reject...
    record["reason"] = len(GATES)  # ...that says "ok"
    with pytest.raises(ValueError, match="does not fit"):
        decisions_from_batch(record)


# ---------------------------------------------------------------------------------------
# Batches.


def random_rows(rng, option_ids, n):
    """``n`` valid request rows: mostly plausible, one value in 12 from the full range."""
    def full(dtype):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)

    def mostly(low, high, wild):
        plausible = rng.integers(low, high, n, endpoint=True)
        return np.where(rng.random(n) < 1 / 12, wild, plausible)

    rows = np.zeros(n, dtype=REQUEST_DTYPE)
    rows["sequence"] = full(np.uint64)
    # Half the requests ask for the catalog's first option, which is built to win often.
    rows["requested_option"] = np.where(rng.random(n) < 0.5, option_ids[0],
                                        rng.choice(option_ids, n))
    rows["input_units"] = mostly(0, 5000, full(np.uint32))
    rows["output_units"] = mostly(0, 5000, full(np.uint32))
    rows["business_value_microcents"] = mostly(10**6, 10**10, full(np.int64))
    rows["budget_limit_microcents"] = mostly(10**6, 10**9, full(np.int64) & (2**63 - 1))
    rows["risk_bps"] = mostly(0, 3000, rng.integers(0, 10_000, n, endpoint=True))
    rows["confidence_bps"] = mostly(5000, 10_000, rng.integers(0, 10_000, n, endpoint=True))
    rows["minimum_quality_bps"] = mostly(0, 5000, rng.integers(0, 10_000, n, endpoint=True))
    rows["max_p95_latency_ms"] = mostly(1000, 5000, full(np.uint32))
    rows["required_capabilities"] = mostly(0, 1, full(np.uint64))
    rows["allowed_provider_mask"] = np.where(rng.random(n) < 0.9, np.uint64(2**64 - 1),
                                             full(np.uint64))
    rows["required_region_mask"] = mostly(0, 1, full(np.uint64))
    return rows


def random_policy_spec(rng, n_options):
    ids = rng.choice(10_000, n_options, replace=False)
    options = [
        option_spec(
            int(i),
            enabled=bool(rng.random() < 0.9),
            quality_bps=int(rng.integers(3000, 10_000)),
            risk_ceiling_bps=int(rng.integers(2000, 10_000)),
            p95_latency_ms=int(rng.integers(0, 3000)),
            capabilities=int(rng.integers(0, 4)),
            provider_id=int(rng.integers(0, 64)),
            region_mask=int(rng.integers(0, 4)),
            input_cost_per_million=int(rng.integers(0, 10**7)),
            output_cost_per_million=int(rng.integers(0, 10**8)),
        )
        for i in ids
    ]
    options[0].update(enabled=True, quality_bps=10_000, p95_latency_ms=100,
                      capabilities=3, region_mask=3)
    return policy_spec(options, hard_risk_limit_bps=int(rng.integers(3000, 10_001)),
                       minimum_confidence_bps=int(rng.integers(0, 5000)),
                       risk_penalty_multiplier_bps=int(rng.integers(0, 30_000)),
                       latency_penalty_microcents_per_ms=int(rng.integers(0, 100)))


def request_from_row(row):
    return Request(**{name: int(row[name]) for name in REQUEST_DTYPE.names})


@pytest.mark.parametrize("n_options", [1, 4, 22, 64])
def test_batch_matches_prescribe_row_by_row(n_options):
    rng = np.random.default_rng(n_options)
    pspec = random_policy_spec(rng, n_options)
    policy = build_policy(pspec)
    rows = random_rows(rng, [o["option_id"] for o in pspec["options"]], 300)
    out = prescribe_batch(policy, rows)
    assert out.dtype == DECISION_DTYPE and out.shape == (300,)
    singles = [prescribe(policy, request_from_row(row)) for row in rows]
    assert decisions_from_batch(out) == singles
    # Named columns line up with the objects too (a struct/dtype field swap would not).
    assert out["winner_cost"].tolist() == [d.winner_cost or 0 for d in singles]
    assert out["options_eligible"].tolist() == [d.options_eligible for d in singles]
    assert [tuple(h) for h in out["histogram"].tolist()] == [d.histogram for d in singles]
    assert [kernel.ACTIONS[a] for a in out["action"]] == [d.action for d in singles]
    assert [kernel.REASONS[r] for r in out["reason"]] == [d.reason for d in singles]
    actions = {d.action for d in singles}
    assert {"execute_requested", "reject"} <= actions
    assert n_options == 1 or "substitute" in actions
    rspecs = [{name: int(row[name]) for name in REQUEST_DTYPE.names} for row in rows[:20]]
    assert [ref.prescribe(pspec, r) for r in rspecs] == [d.to_dict() for d in singles[:20]]


def test_batch_accepts_request_objects_and_readonly_arrays():
    rng = np.random.default_rng(5)
    pspec = random_policy_spec(rng, 8)
    policy = build_policy(pspec)
    rows = random_rows(rng, [o["option_id"] for o in pspec["options"]], 50)
    requests = [request_from_row(row) for row in rows]
    packed = request_array(requests)
    assert packed.tobytes() == rows.tobytes()
    rows.flags.writeable = False
    expected = prescribe_batch(policy, rows)
    assert prescribe_batch(policy, requests).tobytes() == expected.tobytes()
    # A strided copy does not carry padding bytes, so compare decisions, not bytes.
    assert decisions_from_batch(prescribe_batch(policy, rows[::2])) == decisions_from_batch(
        expected[::2])
    assert Decision.from_record(expected[7]) == prescribe(policy, requests[7])


def test_request_array_maps_fields_by_name():
    values = dict(zip(REQUEST_DTYPE.names, range(1, 100)))
    row = request_array([Request(**values)])[0]
    assert {name: int(row[name]) for name in REQUEST_DTYPE.names} == values


def test_empty_batch():
    policy = build_policy(policy_spec([option_spec(1)]))
    assert prescribe_batch(policy, []).shape == (0,)
    assert prescribe_batch(policy, np.zeros(0, REQUEST_DTYPE)).dtype == DECISION_DTYPE


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("risk_bps", 10_001, r"requests\[3\]\.risk_bps must be in \[0, 10000\], got 10001"),
        ("confidence_bps", 20_000, r"requests\[3\]\.confidence_bps"),
        ("minimum_quality_bps", 10_001, r"requests\[3\]\.minimum_quality_bps"),
        ("budget_limit_microcents", -1, r"requests\[3\]\.budget_limit_microcents"),
        ("requested_option", 99, r"requests\[3\]\.requested_option .* got 99"),
    ],
)
def test_batch_validation_names_field_and_first_bad_row(field, value, message):
    policy = build_policy(policy_spec([option_spec(1)]))
    rows = request_array([Request(**request_spec(sequence=i)) for i in range(10)])
    rows[field][[3, 6]] = value
    with pytest.raises(RequestError, match=message):
        prescribe_batch(policy, rows)


@pytest.mark.parametrize(
    "requests, message",
    [
        (np.zeros(3, dtype=np.int64), "dtype REQUEST_DTYPE"),
        (np.zeros((2, 2), dtype=REQUEST_DTYPE), "one-dimensional"),
        ([Request(**request_spec()), "nope"], r"requests\[1\] must be a Request"),
    ],
)
def test_batch_rejects_malformed_input(requests, message):
    policy = build_policy(policy_spec([option_spec(1)]))
    with pytest.raises(RequestError, match=message):
        prescribe_batch(policy, requests)


# ---------------------------------------------------------------------------------------
# Digests.


def digest_case():
    pspec = policy_spec([option_spec(1), option_spec(2, quality_bps=9000), option_spec(3)])
    rspec = request_spec(sequence=42)
    policy, request = build_policy(pspec), Request(**rspec)
    return pspec, rspec, policy, request, prescribe(policy, request)


def test_digest_is_blake3_of_the_documented_encoding():
    pspec, rspec, policy, request, decision = digest_case()
    digest = decision_digest(policy, request, decision)
    assert len(digest) == 32 and isinstance(digest, bytes)
    expected = blake3.blake3(ref.encode(pspec, rspec, decision.to_dict())).digest()
    assert digest == expected
    again = decision_digest(build_policy(pspec), Request(**rspec), decision.replace())
    assert again == digest


def test_digest_encodes_a_reject_with_the_documented_encoding():
    pspec = policy_spec([option_spec(1)], hard_risk_limit_bps=0)
    rspec = request_spec(risk_bps=0)
    policy, request = build_policy(pspec), Request(**rspec)
    decision = prescribe(policy, request)
    assert decision.action == "reject"
    expected = blake3.blake3(ref.encode(pspec, rspec, decision.to_dict())).digest()
    assert decision_digest(policy, request, decision) == expected


@pytest.mark.parametrize("field", list(request_spec()))
def test_digest_changes_with_every_request_field(field):
    pspec, rspec, policy, request, decision = digest_case()
    new_value = 2 if field == "requested_option" else rspec[field] ^ 1
    changed = Request(**dict(rspec, **{field: new_value}))
    assert decision_digest(policy, changed, decision) != decision_digest(
        policy, request, decision)


@pytest.mark.parametrize(
    "changes",
    [
        {"sequence": 43},
        {"action": "execute_requested"},
        {"winner_id": 3},
        {"winner_utility": 1},
        {"winner_cost": 1},
        {"runner_up_id": 99},
        {"runner_up_utility": 1},
        {"runner_up_id": None, "runner_up_utility": None},
        {"options_evaluated": 4},
        {"options_eligible": 1},
        *({"histogram": counts(**{gate: 1})} for gate in GATES),
        {"action": "reject", "reason": "budget", "winner_id": None, "winner_utility": None,
         "winner_cost": None, "runner_up_id": None, "runner_up_utility": None},
    ],
)
def test_digest_changes_with_every_decision_field(changes):
    _, _, policy, request, decision = digest_case()
    tampered = decision.replace(**changes)
    assert tampered != decision
    assert decision_digest(policy, request, tampered) != decision_digest(
        policy, request, decision)
    assert not verify(policy, request, tampered)


@pytest.mark.parametrize("field", list(option_spec()))
def test_digest_changes_with_every_option_field(field):
    pspec, rspec, policy, request, decision = digest_case()
    option = pspec["options"][1]
    new_value = {"enabled": False, "option_id": 77}.get(field, option[field] ^ 1)
    changed = dict(option, **{field: new_value})
    options = [pspec["options"][0], changed, pspec["options"][2]]
    other = build_policy(dict(pspec, options=options))
    assert decision_digest(other, request, decision) != decision_digest(
        policy, request, decision)


def test_verify_accepts_genuine_decisions_only():
    pspec, rspec, policy, request, decision = digest_case()
    assert verify(policy, request, decision)
    other_request = Request(**dict(rspec, business_value_microcents=10))
    assert not verify(policy, other_request, decision)
    assert verify(policy, other_request, prescribe(policy, other_request))
