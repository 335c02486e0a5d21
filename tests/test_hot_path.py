"""The hot path stays white: no Python interaction inside nogil code.

Runs ``cython -a`` on every module of syntra_core and checks that each line inside a
``noexcept nogil`` function or a ``with nogil:`` block scores 0 in the annotation (the
report marks every line that touches the Python C-API with a positive score).
"""

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "src" / "syntra_core"
MODULES = sorted(p.stem for p in CORE.glob("*.pyx"))
LINE = re.compile(
    r'<pre class="cython line score-(\d+)"[^>]*>.{0,3}?<span class="">(\d+)</span>:', re.S
)


def _nogil_lines(source: list[str]) -> set[int]:
    """1-based numbers of the lines inside nogil functions and `with nogil:` blocks.

    A cdef function's signature may span lines: it is read up to the line that balances
    its parentheses, and counts as nogil if that line ends in ``nogil:``.
    """
    inside: set[int] = set()
    block_indent = None
    signature: tuple[int, int] | None = None  # (indent, open parentheses) of a cdef signature
    for number, line in enumerate(source, start=1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if stripped and indent <= block_indent:
                block_indent = None
            elif stripped and not stripped.startswith("#"):
                inside.add(number)
        if block_indent is not None:
            continue
        if stripped == "with nogil:":
            block_indent = indent
            continue
        if signature is None and stripped.startswith("cdef ") and "(" in stripped:
            signature = (indent, 0)
        if signature is not None:
            start, depth = signature
            depth += stripped.count("(") - stripped.count(")")
            signature = (start, depth)
            if depth <= 0:
                signature = None
                if re.search(r"\bnogil\s*:\s*$", stripped):
                    block_indent = start
    return inside


@pytest.mark.parametrize("module", MODULES)
def test_nogil_code_is_white(module, tmp_path):
    pyx = CORE / f"{module}.pyx"
    subprocess.run(
        [sys.executable, "-m", "cython", "-3", "-a", "-I", str(CORE.parent),
         "--directive", "boundscheck=False,wraparound=False,cdivision=True,initializedcheck=False",
         str(pyx), "-o", str(tmp_path / f"{module}.c")],
        check=True, capture_output=True,
    )
    report = (tmp_path / f"{module}.html").read_text()
    scores = {int(n): int(s) for s, n in LINE.findall(report)}
    source = pyx.read_text().splitlines()
    checked = _nogil_lines(source)
    assert checked, f"{module} has no nogil code to check"
    yellow = [f"{n}: {html.unescape(source[n - 1].strip())}" for n in sorted(checked) if scores.get(n, 0) > 0]
    assert not yellow, f"{module}.pyx touches Python inside nogil code:\n" + "\n".join(yellow)


def _traced_growth(run) -> int:
    """Bytes still allocated through Python's allocators after ``run()``, net of before."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = run()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del result
    return after - before


def test_c_loop_allocates_nothing_per_round():
    from syntra_core.bandits import ArmTable, BetaThompson, run_bernoulli

    def peak(rounds):
        import tracemalloc

        rule = BetaThompson(ArmTable(5))
        run_bernoulli(rule, [0.1, 0.2, 0.3, 0.4, 0.5], 10, seed=1)  # caches sized
        tracemalloc.start()
        try:
            run_bernoulli(rule, [0.1, 0.2, 0.3, 0.4, 0.5], rounds, seed=2)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # tracemalloc sees every thread's allocations (pytest-xdist's own included): the least
    # growth of three tries is the loop's.
    growth = min(peak(200_000) - peak(1_000) for _ in range(3))
    assert growth < 1024, growth


def test_completed_decisions_free_their_memory():
    from syntra import Engine

    cap = Engine.memory(seed=1).install(
        "tenants/t/jobs/j/capsules/c", options=["a", "b", "c"]
    )

    def play(rounds):
        for i in range(rounds):
            d = cap.decide("k")
            cap.feedback(d.decision_id, float(i % 2))

    play(1_000)
    assert _traced_growth(lambda: play(100_000)) < 4096
    assert cap.pending == 0 and cap.decisions == 101_000
