"""A closeness check for kernel outputs that says where they differ, not only that they do.

A kernel test fails for one of a few reasons: an element never written (it keeps the NaN the
test poisoned the output with), a tile boundary computed wrong (the differences cluster along
one index), or plain rounding beyond tolerance. The message lists the NaN count, how many
elements differ, the first few positions with both values, and the worst absolute and
relative errors, so the reason shows in the failure itself.
"""

from __future__ import annotations

import torch

TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
"""(atol, rtol) per storage dtype: a few units of float16's and bfloat16's last place
(2^-11 and 2^-8 relative), and float32 with room for a different summation order."""


def assert_close_report(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    name: str = "tensor",
    shown: int = 8,
) -> None:
    """Fail unless |actual - expected| <= atol + rtol * |expected| everywhere (NaN never passes
    unless both are NaN), with a message that locates the differences."""
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
        )
    got, want = actual.detach().double().cpu(), expected.detach().double().cpu()
    both_nan = got.isnan() & want.isnan()
    error = (got - want).abs()
    wrong = ~(error <= atol + rtol * want.abs()) & ~both_nan
    if not bool(wrong.any()):
        return
    lines = [
        f"{name}: {int(wrong.sum())} of {wrong.numel()} elements differ "
        f"(atol {atol:g}, rtol {rtol:g})"
    ]
    unwritten = got.isnan() & ~want.isnan()
    if bool(unwritten.any()):
        first = tuple(unwritten.nonzero()[0].tolist())
        lines.append(f"  {int(unwritten.sum())} are NaN (never written?), the first at {first}")
    for index in wrong.nonzero()[:shown].tolist():
        at = tuple(index)
        lines.append(f"  at {at}: got {got[at].item():.8g}, expected {want[at].item():.8g}")
    finite = torch.where(wrong & error.isfinite(), error, torch.zeros_like(error))
    if bool(finite.any()):
        worst = tuple(torch.unravel_index(finite.argmax(), finite.shape))
        worst = tuple(int(i) for i in worst)
        relative = finite[worst].item() / max(abs(want[worst].item()), 1e-300)
        lines.append(
            f"  largest error {finite[worst].item():.3g} (relative {relative:.3g}) at {worst}"
        )
    raise AssertionError("\n".join(lines))
