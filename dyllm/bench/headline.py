"""The issue's three questions about DyLLM at its default tau, answered from a report at each
block length it ran (each block length against its own dense and fast-dual runs).

1. Is its exact-match accuracy within 1 point of dense (both at one token per step)?
2. Is its throughput at least 3x dense's (same setting)?
3. Does each of its points (nu = 1, 2, 4) lie on or beyond Fast-dLLM dual cache's curve?

"On or beyond" a curve: the curve is the piecewise-linear line through the dual cache's points in
(log throughput, accuracy). A point at a throughput inside the curve's range must have at least
the curve's accuracy there; a point faster than the whole curve must be at least as accurate as
its fastest point; a point slower than the whole curve is beyond it only when it is at least as
accurate as the curve's most accurate point (else a dual-cache point beats it on both axes).
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from dyllm.policies.cosine import DEFAULT_TAU

ACCURACY_MARGIN_POINTS = 1.0
SPEEDUP_TARGET = 3.0


def curve_accuracy_at(curve: list[tuple[float, float]], throughput: float) -> float:
    """The curve's accuracy at `throughput`, per the rules above (curve: (tokens/s, accuracy))."""
    points = sorted(curve)
    if throughput >= points[-1][0]:
        return points[-1][1]
    if throughput <= points[0][0]:
        return max(accuracy for _, accuracy in points)
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 <= throughput <= x1:
            share = (math.log(throughput) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + share * (y1 - y0)
    raise AssertionError("unreachable: throughput lies within the curve's range")


def _runs_of(report: dict[str, Any], label: str, block: int) -> dict[int, dict[str, Any]]:
    return {
        run["decoding"]["tokens_per_step"]: run
        for run in report["runs"]
        if run["method"]["label"] == label
        and run["block_length"] == block
        and run["decoding"]["tokens_per_step"] is not None
    }


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The answers at each block length of `report["workload"]["block_lengths"]` where the grid
    has dense and DyLLM at the default tau at one token per step and fast-dual (none: [])."""
    answers = (block_headline(report, block) for block in report["workload"]["block_lengths"])
    return [answer for answer in answers if answer is not None]


def block_headline(report: dict[str, Any], block: int) -> dict[str, Any] | None:
    """The answers at block length `block`, or None when the report lacks dense, DyLLM at the
    default tau or fast-dual at one token per step there."""
    tau = DEFAULT_TAU.get(report["model"]["family"], 0.99)
    label = f"dyllm tau={tau:g}"
    dyllm, dense, dual = (_runs_of(report, name, block) for name in (label, "dense", "fast-dual"))
    if 1 not in dyllm or 1 not in dense or not dual:
        return None
    curve = [(run["tokens_per_second"], run["exact_match"]) for run in dual.values()]
    beyond = {
        f"nu={nu}": run["exact_match"] >= curve_accuracy_at(curve, run["tokens_per_second"])
        for nu, run in sorted(dyllm.items())
    }
    points = (dyllm[1]["exact_match"] - dense[1]["exact_match"]) * 100
    speedup = dyllm[1]["tokens_per_second"] / dense[1]["tokens_per_second"]
    return {
        "block_length": block,
        "method": label,
        "exact_match_points_vs_dense": points,
        "within_1_point": points >= -ACCURACY_MARGIN_POINTS,
        "speedup_vs_dense": speedup,
        "at_least_3x": speedup >= SPEEDUP_TARGET,
        "on_or_beyond_fast_dual": beyond,
    }


def format_headline(answers: list[dict[str, Any]]) -> str:
    """One line per block length with answers."""
    if not answers:
        return "headline: needs dense, dyllm at the default tau and fast-dual in the grid"
    return "\n".join(_format_block(block_answers) for block_answers in answers)


def _format_block(answers: dict[str, Any]) -> str:
    beyond = ", ".join(
        f"{nu} {'yes' if ok else 'no'}" for nu, ok in answers["on_or_beyond_fast_dual"].items()
    )
    return (
        f"block {answers['block_length']}: {answers['method']} at nu=1: "
        f"{answers['exact_match_points_vs_dense']:+.1f} exact-match points vs dense "
        f"(within 1: {'yes' if answers['within_1_point'] else 'no'}), "
        f"{answers['speedup_vs_dense']:.2f}x dense tokens/s (>= 3x: "
        f"{'yes' if answers['at_least_3x'] else 'no'}); on or beyond fast-dual's curve: {beyond}"
    )
