"""Draw a recompute trace (layer x step) as a PNG heatmap: what `dyllm trace` shows.

A trace file is the JSON `dyllm generate --trace FILE` writes: the policy, and per step the
fraction of rows that were queries and, per layer, the fractions recomputed through attention
(K/V + exact row) and through the FFN. Needs matplotlib (`pip install dyllm[plots]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyllm.json_files import read_json


def read_trace(path: str | Path) -> dict[str, Any]:
    """A trace file's contents; a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {path} does not exist")
    data = read_json(path, advice=f"write it again with `dyllm generate --trace {path.name}`")
    if not isinstance(data, dict) or not data.get("trace"):
        raise ValueError(
            f"{path} holds no trace; write one with `dyllm generate --trace {path.name} ...`"
        )
    return data


def draw_trace(trace: dict[str, Any], out: str | Path) -> Path:
    """Two heatmaps (attention and FFN recompute fraction, layer x step) saved to `out`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ValueError("drawing traces needs matplotlib: pip install 'dyllm[plots]'") from error
    import numpy as np

    steps = trace["trace"]
    attention = np.array([entry["attention"] for entry in steps]).T  # [layers, steps]
    ffn = np.array([entry["ffn"] for entry in steps]).T
    figure, axes = plt.subplots(2, 1, figsize=(max(6, len(steps) / 12), 6), sharex=True)
    for axis, values, title in (
        (axes[0], attention, "K/V + exact attention"),
        (axes[1], ffn, "FFN"),
    ):
        image = axis.imshow(
            values,
            aspect="auto",
            origin="lower",
            cmap="magma",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        axis.set_ylabel("layer")
        axis.yaxis.get_major_locator().set_params(integer=True)
        axis.set_title(f"rows recomputed: {title}")
        figure.colorbar(image, ax=axis, label="fraction of rows")
    axes[1].set_xlabel("denoising step")
    policy = trace.get("policy", {})
    details = ", ".join(f"{k}={v}" for k, v in policy.items() if k != "name" and v is not None)
    figure.suptitle(f"policy {policy.get('name', '?')}\n{details}", fontsize=9)
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
