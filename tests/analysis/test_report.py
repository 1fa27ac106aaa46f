"""The report's pass/fail rules: one table (THRESHOLDS), each rule checked at its edge, and the verdicts follow it."""

import pytest

from sam3dseg.analysis.report import THRESHOLDS, _supervision_rows

# rule: (a value that holds the claim, one just past the edge that does not)
EDGES = {
    "conv FLOPs slope": (1.049, 1.051),
    "attention FLOPs slope": (1.91, 1.89),
    "conv memory slope": (0.86, 0.84),
    "identity gradient bound": (1.0, 0.999),
    "concat parameter ratio": (1.5, 1.49),
    "deep supervision difference": (9e-11, 1e-10),
    "orthogonal cosine": (-0.19, 0.2),
}


def test_every_rule_has_its_edge_checked():
    assert set(EDGES) == set(THRESHOLDS)


@pytest.mark.parametrize("name", EDGES)
def test_each_rule_at_its_edge(name):
    inside, outside = EDGES[name]
    assert THRESHOLDS[name].holds(inside) and not THRESHOLDS[name].holds(outside)


def _seed(diff: float, cosine: float) -> dict:
    return {"cosine_final_auxiliary": cosine, "max_abs_diff": diff, "max_abs_gradient": 1.0, "first_block_total": 2.0,
            "first_block_per_level": [0.0, 0.0, 0.0, 1.0]}  # fmt: skip


@pytest.mark.parametrize("diff,verdict", [(9e-11, "holds"), (1e-10, "does not hold")])
def test_the_deep_supervision_verdict_follows_its_rule(diff, verdict):
    rows = _supervision_rows({"deep_supervision": {"seeds": [_seed(diff, 0.1)]}})
    assert rows[0][2] == verdict
    assert rows[1][3].endswith("nearly orthogonal, they add in quadrature")
    assert _supervision_rows({"deep_supervision": {"seeds": [_seed(diff, 0.3)]}})[1][3].endswith("partly aligned")
