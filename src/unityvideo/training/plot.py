"""Loss curves of a run as one PNG: training loss by task, validation loss by task and by modality.

    python -m unityvideo.training.plot runs/tiny-world docs/training-curves.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from ..flow import TASKS
from ..modalities import STREAM_NAMES
from .logger import read_metrics

STREAMS = STREAM_NAMES


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: str | Path, out: str | Path, title: str | None = None) -> Path:
    """Write the run's curves to `out` (PNG); stage boundaries are dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    boundaries, end = [], 0
    for stage in config["stages"][:-1]:
        end += stage["steps"]
        boundaries.append(end)

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    axes = axes.flatten()
    panels = [
        (axes[0], train, [f"loss/{t}" for t in TASKS], "training loss by task (smoothed)"),
        (axes[1], val, [f"val/{t}" for t in TASKS], "validation loss by task (EMA)"),
        (axes[2], val, [f"val/{m}" for m in STREAMS], "validation loss by modality, all tasks (EMA)"),
        (axes[3], val, [f"val/estimate/{m}" for m in STREAMS], "validation loss of estimation by modality (EMA)"),
    ]
    for ax, source, keys, label in panels:
        for key in keys:
            steps, values = _series(source, key)
            if not steps:
                continue
            if source is train:
                values = _smooth(values, 5)
            ax.plot(steps, values, label=key.split("/")[-1], marker="" if source is train else ".")
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle=":", linewidth=1)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching MSE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"{run_dir.name}: dotted lines = curriculum stage boundaries")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m unityvideo.training.plot RUN_DIR OUT.png")
    print(plot_run(sys.argv[1], sys.argv[2]))
