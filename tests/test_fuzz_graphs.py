"""Property: any small graph of ops vnpu lowers strictly (tests/fuzz_graph_gen.py draws chains and
DAGs with broadcasting, non-contiguous views, odd sizes, several outputs and shared
subexpressions) compiles with strict=True, runs on the simulated chip (the default chip and two
small ones that force tiling) and matches eager PyTorch: fp32 outputs within
1e-4 * max|ref| (floor 1e-5), integer and bool outputs exactly.

The long run of the same property: benchmarks/fuzz_graphs.py --examples 10000 --seed S.
"""
from __future__ import annotations

import warnings

from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from fuzz_graph_gen import HypothesisChooser, draw_graph, fuzz_chip, run_graph


# No shrink phase: hypothesis' shrinking of a compile-and-simulate property runs for minutes;
# a failure prints the whole graph as a standalone reproducer, and benchmarks/fuzz_graphs.py
# shrinks its findings (one failing output, only the lines it needs).
@settings(max_examples=50, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), data_seed=st.integers(0, 2**31 - 1))
def test_random_graph_matches_eager(data: st.DataObject, data_seed: int) -> None:
    # graphs that would hit a bug already pinned by an xfail test in test_fuzz_regressions.py
    # are not drawn here (the long run draws them)
    fg = draw_graph(HypothesisChooser(data), data_seed, avoid_known_bugs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        outcome = run_graph(fg, fuzz_chip(fg.chip))
    assert outcome.status != "unsupported", f"generator bug, an op vnpu does not lower strictly:\n{outcome.detail}"
    assert outcome.status == "ok", f"{outcome.status}: {outcome.detail}\n--- reproducer ---\n{fg.source()}"
