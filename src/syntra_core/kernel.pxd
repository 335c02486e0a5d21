# The integer decision kernel: gates, utility in microcents, ranking.
#
# Policies, requests and decisions are plain C structs so a caller can run prescribe_c
# over arrays of them without the GIL. Nothing here allocates, takes the GIL or raises.
# RequestC and DecisionC are mirrored field for field by REQUEST_DTYPE and DECISION_DTYPE
# in kernel.pyx; keep the two in step. The typed memoryviews refuse a dtype whose field
# types or layout differ, and tests/test_kernel.py checks that the names line up.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef enum:
    MAX_OPTIONS_C = 256


# Histogram buckets, in evaluation order. The two global gates come first; a reason code
# of GATE_COUNT means no gate rejected the request ("ok"). Anonymous enums, so the
# constants are plain ints that can index arrays.
cdef enum:
    GATE_HARD_RISK_LIMIT
    GATE_MINIMUM_CONFIDENCE
    GATE_DISABLED
    GATE_QUALITY_FLOOR
    GATE_LATENCY
    GATE_CAPABILITY
    GATE_PROVIDER
    GATE_REGION
    GATE_RISK_CEILING
    GATE_BUDGET
    GATE_NON_POSITIVE_UTILITY
    GATE_COUNT


cdef enum:
    ACTION_EXECUTE_REQUESTED
    ACTION_SUBSTITUTE
    ACTION_REJECT


ctypedef struct OptionC:
    uint64_t capabilities
    uint64_t region_mask
    int64_t input_cost_per_million    # microcents per million input units, >= 0
    int64_t output_cost_per_million   # microcents per million output units, >= 0
    uint32_t option_id
    uint32_t quality_bps
    uint32_t risk_ceiling_bps
    uint32_t p95_latency_ms
    uint8_t provider_id               # 0..63, a bit of Request.allowed_provider_mask
    bint enabled


ctypedef struct PolicyC:
    OptionC options[MAX_OPTIONS_C]    # the first n_options are the catalog
    # options[i].p95_latency_ms * latency_penalty_microcents_per_ms, saturated: it depends
    # on the policy alone, so PolicySnapshot works it out once.
    int64_t latency_terms[MAX_OPTIONS_C]
    int64_t latency_penalty_microcents_per_ms
    uint32_t n_options
    uint32_t hard_risk_limit_bps
    uint32_t minimum_confidence_bps
    uint32_t risk_penalty_multiplier_bps


ctypedef struct RequestC:
    uint64_t sequence
    int64_t business_value_microcents
    int64_t budget_limit_microcents
    uint64_t required_capabilities
    uint64_t allowed_provider_mask
    uint64_t required_region_mask
    uint32_t requested_option
    uint32_t input_units
    uint32_t output_units
    uint32_t risk_bps
    uint32_t confidence_bps
    uint32_t minimum_quality_bps
    uint32_t max_p95_latency_ms


ctypedef struct DecisionC:
    uint64_t sequence
    int64_t winner_utility      # 0 on reject
    int64_t winner_cost         # 0 on reject
    int64_t runner_up_utility   # 0 without a runner-up
    uint32_t winner_id          # 0 on reject
    uint32_t runner_up_id       # 0 without a runner-up
    uint32_t options_evaluated
    uint32_t options_eligible
    uint32_t histogram[GATE_COUNT]
    uint8_t action              # ACTION_*
    uint8_t reason              # the rejecting GATE_*, or GATE_COUNT for "ok"
    uint8_t has_runner_up       # 0 or 1


cdef void prescribe_c(const PolicyC* policy, const RequestC* request,
                      DecisionC* out) noexcept nogil
