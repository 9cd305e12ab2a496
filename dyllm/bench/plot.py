"""The accuracy-throughput picture, in the style of the DyLLM paper's main figure.

One curve per method through its nu = 1, 2, 4 points (tokens per step written beside each
point), throughput on the x axis (log scale), accuracy on the y axis; threshold parallel decoding
is drawn as a hollow marker of the method's colour, off the curve. Two panels per block length,
one row per block length (a method keeps its colour and marker in every row, the axes are shared
so rows compare at a glance): exact match and per-token accuracy. Needs matplotlib
(`pip install dyllm[plots]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyllm.bench.table import batch_text

MARKERS = "osD^vP*Xhp<>"


def draw_curves(report: dict[str, Any], path: Path) -> Path:
    """Write the PNG to `path` and return it; ValueError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError(
            "drawing the benchmark needs matplotlib: pip install 'dyllm[plots]' (or pass --no-plot)"
        ) from None
    blocks = report["workload"]["block_lengths"]
    figure, grid = plt.subplots(
        len(blocks),
        2,
        figsize=(13, 5.5 * len(blocks)),
        squeeze=False,
        sharex=True,
        sharey="col",
    )
    labels = list(dict.fromkeys(run["method"]["label"] for run in report["runs"]))
    colours = plt.get_cmap("tab10")
    for axes, block in zip(grid, blocks, strict=True):
        for number, label in enumerate(labels):
            style = {"color": colours(number % 10), "marker": MARKERS[number % len(MARKERS)]}
            runs = [
                run
                for run in report["runs"]
                if run["method"]["label"] == label and run["block_length"] == block
            ]
            _draw_method(axes, runs, label, style)
        for axis, name in zip(axes, ("exact match (%)", "per-token accuracy (%)"), strict=True):
            axis.set_xscale("log")
            axis.set_ylabel(name)
            axis.set_title(f"block length {block}", fontsize=9)
            axis.grid(True, which="both", alpha=0.3)
            axis.tick_params(labelbottom=True)
            axis.set_xlabel("throughput (generated tokens/s, log scale)")
    model, workload, machine = report["model"], report["workload"], report["machine"]
    thresholds = ", ".join(d["label"] for d in workload["decodings"] if d["threshold"] is not None)
    figure.suptitle(
        f"{model['name']} ({workload['suite']} suite): accuracy vs throughput, "
        f"{batch_text(workload)}, {workload['problems']} problems, {machine['device']} "
        f"({_threads(machine)}). Numbers: tokens per step; hollow: {thresholds or 'none'}",
        fontsize=10,
    )
    grid[0][1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _draw_method(axes, runs: list[dict[str, Any]], label: str, style: dict[str, Any]) -> None:
    """One method's nu curve (points labelled with nu) and hollow threshold points, on the
    exact-match and per-token axes."""
    curve = sorted(
        (run for run in runs if run["decoding"]["tokens_per_step"] is not None),
        key=lambda run: run["decoding"]["tokens_per_step"],
    )
    threshold = [run for run in runs if run["decoding"]["threshold"] is not None]
    for axis, key in zip(axes, ("exact_match", "token_accuracy"), strict=True):
        xs = [run["tokens_per_second"] for run in curve]
        ys = [run[key] * 100 for run in curve]
        axis.plot(xs, ys, label=label, linewidth=1.5, markersize=6, **style)
        for run, x, y in zip(curve, xs, ys, strict=True):
            axis.annotate(
                str(run["decoding"]["tokens_per_step"]),
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=style["color"],
            )
        for run in threshold:
            axis.plot(
                run["tokens_per_second"],
                run[key] * 100,
                linestyle="none",
                markerfacecolor="none",
                markersize=9,
                **style,
            )


def _threads(machine: dict[str, Any]) -> str:
    count = machine["torch_threads"]
    return f"{count} thread" + ("" if count == 1 else "s")
