"""syntra_core.rng: the generator against a reference, the distributions against scipy."""

import multiprocessing

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from syntra_core.rng import RandomStream

MASK = 2**64 - 1
U64 = st.integers(min_value=0, max_value=MASK)


def _splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK


def reference_stream(seed, sequence, count):
    """xoshiro256** as its authors publish it, seeded the way rng.pyx documents."""
    _, hashed = _splitmix64(seed)
    key = hashed ^ ((sequence * 0xD1B54A32D192ED03) & MASK)
    s = []
    for _ in range(4):
        key, value = _splitmix64(key)
        s.append(value)
    out = []
    for _ in range(count):
        out.append((_rotl((s[1] * 5) & MASK, 7) * 9) & MASK)
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
    return out


def test_splitmix64_known_answer():
    # First output of splitmix64 seeded with 0, from the reference C implementation.
    assert _splitmix64(0)[1] == 0xE220A8397B1DCDAF


@given(U64, U64)
def test_stream_matches_reference_xoshiro(seed, sequence):
    stream = RandomStream(seed, sequence)
    assert [stream.next_u64() for _ in range(5)] == reference_stream(seed, sequence, 5)


@given(U64, U64)
def test_uniform_in_unit_interval(seed, sequence):
    values = RandomStream(seed, sequence).uniform(64)
    assert ((values >= 0.0) & (values < 1.0)).all()


@given(U64, st.integers(min_value=1, max_value=MASK))
def test_integers_below_bound(seed, bound):
    values = RandomStream(seed).integers(bound, 32)
    assert (values < np.uint64(bound)).all()


def test_integers_are_uniform():
    counts = np.bincount(RandomStream(3).integers(7, 70_000).astype(np.int64), minlength=7)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_streams_depend_on_seed_and_sequence():
    first = RandomStream(1, 2).uniform(4)
    assert not np.array_equal(first, RandomStream(2, 1).uniform(4))
    assert not np.array_equal(first, RandomStream(1, 3).uniform(4))
    assert np.array_equal(first, RandomStream(1, 2).uniform(4))


def test_neighbouring_sequences_are_uncorrelated():
    firsts = np.array([RandomStream(9, seq).random() for seq in range(20_000)])
    assert stats.kstest(firsts, "uniform").pvalue > 1e-4
    assert abs(np.corrcoef(firsts[:-1], firsts[1:])[0, 1]) < 0.03


N = 20_000


def test_uniform_ks():
    assert stats.kstest(RandomStream(11).uniform(N), "uniform").pvalue > 1e-4


def test_normal_ks():
    assert stats.kstest(RandomStream(12).normal(N), "norm").pvalue > 1e-4


@pytest.mark.parametrize("shape", [0.05, 0.3, 0.9, 1.0, 2.5, 10.0, 250.0])
def test_gamma_ks(shape):
    sample = RandomStream(13, int(shape * 100)).gamma(shape, N)
    assert stats.kstest(sample, stats.gamma(shape).cdf).pvalue > 1e-4


@pytest.mark.parametrize("a,b", [(0.5, 0.5), (1.0, 1.0), (2.0, 5.0), (0.2, 3.0), (40.0, 7.0), (300.0, 900.0)])
def test_beta_ks(a, b):
    sample = RandomStream(14, int(a * 10 + b)).beta(a, b, N)
    assert stats.kstest(sample, stats.beta(a, b).cdf).pvalue > 1e-4


def test_ks_detects_a_wrong_distribution():
    # The KS checks above have power: the same sample fails against a nearby shape.
    sample = RandomStream(13).gamma(2.5, N)
    assert stats.kstest(sample, stats.gamma(2.7).cdf).pvalue < 1e-4


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_shapes_raise(bad):
    stream = RandomStream(1)
    with pytest.raises(ValueError, match="shape"):
        stream.gamma(bad, 1)
    with pytest.raises(ValueError, match="a must be"):
        stream.beta(bad, 1.0)
    with pytest.raises(ValueError, match="b must be"):
        stream.beta(1.0, bad)


@pytest.mark.parametrize("seed,sequence", [(-1, 0), (2**64, 0), (0, -1), (0, 2**64)])
def test_seed_out_of_range_raises(seed, sequence):
    name = "seed" if seed != 0 else "sequence"
    with pytest.raises(ValueError, match=rf"{name} must be an integer in \[0, 2\*\*64\)"):
        RandomStream(seed, sequence)


@pytest.mark.parametrize("seed,sequence,name", [
    (7.9, 0, "seed"), (7.0, 0, "seed"), (True, 0, "seed"), (np.bool_(True), 0, "seed"),
    ("7", 0, "seed"), (None, 0, "seed"), (7, 1.5, "sequence"), (7, False, "sequence"),
])
def test_seed_and_sequence_must_be_integers(seed, sequence, name):
    with pytest.raises(TypeError, match=f"{name} must be an integer, got "):
        RandomStream(seed, sequence)


def test_numpy_integers_name_the_same_stream():
    stream = RandomStream(np.uint64(2**64 - 1), np.int32(3))
    assert (stream.seed, stream.sequence) == (2**64 - 1, 3)
    assert type(stream.seed) is int
    assert stream.random() == RandomStream(2**64 - 1, 3).random()


def test_negative_size_raises():
    with pytest.raises(ValueError, match="size"):
        RandomStream(1).uniform(-1)


def _draws(args):
    seed, sequence = args
    stream = RandomStream(seed, sequence)
    return (
        stream.next_u64(),
        stream.normal(3).tolist(),
        stream.gamma(0.7, 3).tolist(),
        stream.beta(2.0, 3.0, 3).tolist(),
    )


def test_same_draws_in_other_processes():
    keys = [(7, 0), (7, 1), (2**63 + 5, 12345)]
    local = [_draws(key) for key in keys]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        remote = pool.map(_draws, keys)
    assert remote == local
