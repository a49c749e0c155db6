"""The results files of an evaluation: the rows as JSON and a Markdown table, the per-clip figures, a bar
chart per task and the kept videos (for `report.write_report`). What the rows hold is described in
`unityvideo.eval.runner`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from unityvideo.eval.metrics import PRIMARY_METRIC

EVAL_TASKS = ("estimate", "control", "joint", "t2v")  # the tasks an evaluation runs, in the order shown
__all__ = ["EVAL_TASKS", "write_results", "save_videos", "load_videos", "markdown_table", "bar_text", "interval_text",
           "references_text", "number_text", "comparison_value", "plot_rows", "plot_task"]


def number_text(value: float | None) -> str:
    """A figure as the tables show it: 4 significant digits, n/a when missing."""
    return "n/a" if value is None else f"{value:.4g}"


def bar_text(row: Mapping) -> str:
    if row["baseline"] is None:
        return "–"
    return f"{number_text(row['baseline'])} ({row['baseline_name']}{', oracle' if row['baseline_oracle'] else ''})"


def interval_text(row: Mapping) -> str:
    return "–" if not row.get("interval") else "[{:+.3g}, {:+.3g}]".format(*row["interval"])


def references_text(row: Mapping) -> str:
    return "; ".join(f"{r['name']}{' (oracle)' if r['oracle'] else ''} {number_text(r['value'])}"
                     for r in row.get("references", ())) or "–"


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per row: the model, the bar it has to beat (name; oracle?), the 95 % bootstrap
    interval of the improvement (positive = better), the verdict and the references beside it."""
    lines = ["| task | modality | metric | model | baseline | gain, 95% CI | verdict | also shown |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        arrow = "↑" if row["higher_is_better"] else "↓"
        metric = f"**{row['metric']}**" if row.get("primary") else row["metric"]
        lines.append(f"| {row['task']} | {row['modality']} | {metric} {arrow} | {number_text(row['model'])} | "
                     f"{bar_text(row)} | {interval_text(row)} | {row.get('verdict') or '–'} | "
                     f"{references_text(row)} |")
    return "\n".join(lines) + "\n"


def comparison_value(row: Mapping) -> tuple[float | None, str | None]:
    """What a row's model is shown against: its bar, or else its first reference (t2v: the GT video)."""
    if row["baseline"] is not None:
        return row["baseline"], row["baseline_name"]
    refs = row.get("references") or []
    return (refs[0]["value"], refs[0]["name"]) if refs else (None, None)


def plot_rows(task: str, rows: Sequence[dict]) -> list[dict]:
    """The rows a task's bar chart shows: each modality's primary metric (t2v: the quality proxies)."""
    if task == "t2v":
        return [r for r in rows if r["task"] == task]
    return [r for r in rows if r["task"] == task and r["modality"] in PRIMARY_METRIC
            and r["metric"] == PRIMARY_METRIC[r["modality"]][0]]


def plot_task(task: str, rows: Sequence[dict], path: Path) -> Path | None:
    """Bar charts, one panel per (modality, metric) with its own scale: model vs baseline. None when the
    task has no rows to show."""
    shown = plot_rows(task, rows)
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline_label = comparison_value(shown[0])[1] or "baseline"
    fig, axes = plt.subplots(1, len(shown), figsize=(0.4 + 1.45 * len(shown), 2.6), dpi=110, squeeze=False)
    for ax, row in zip(axes[0], shown):
        values = [row["model"], comparison_value(row)[0]]
        bars = ax.bar([0, 1], [v if v is not None else 0.0 for v in values], 0.7, color=["#3b6fb6", "#b0b0b0"])
        for bar, value in zip(bars, values):
            ax.annotate(number_text(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks([0, 1], ["model", "base"], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{row['modality']}\n{row['metric']} {'↑' if row['higher_is_better'] else '↓'}", fontsize=8)
        ax.margins(y=0.15)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"{task}: model (blue) vs {baseline_label} (grey)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_videos(path: Path, videos: Sequence[dict]) -> Path:
    """The kept videos as PATH (.json index: task, modality, clip, caption, cell labels) + PATH.npz (frames)."""
    arrays, index = {}, []
    for i, panel in enumerate(videos):
        cells = []
        for j, cell in enumerate(panel["cells"]):
            key = f"v{i:03d}_c{j}"
            arrays[key] = np.asarray(cell["frames"], np.uint8)
            cells.append({"label": cell["label"], "key": key})
        index.append({**{k: panel[k] for k in ("task", "modality", "clip_id", "caption")}, "cells": cells})
    path.write_text(json.dumps(index, indent=1))
    np.savez_compressed(path.with_suffix(".npz"), **arrays)
    return path


def load_videos(path: str | Path) -> list[dict]:
    """What `save_videos` wrote, cells with their frames (uint8 (F, H, W, 3))."""
    path = Path(path)
    index = json.loads(path.read_text())
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as arrays:
        for panel in index:
            for cell in panel["cells"]:
                cell["frames"] = arrays[cell.pop("key")]
    return index


def write_results(out_dir: Path, rows: Sequence[dict], per_clip: Sequence[dict], settings: dict,
                  videos: Sequence[dict], name: str = "results") -> dict[str, Path]:
    """NAME.json, NAME.md, NAME.per_clip.json, NAME.<task>.png, NAME.videos.json/.npz in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"rows": out_dir / f"{name}.json", "table": out_dir / f"{name}.md",
             "per_clip": out_dir / f"{name}.per_clip.json", "videos": out_dir / f"{name}.videos.json"}
    paths["rows"].write_text(json.dumps(list(rows), indent=1) + "\n")
    paths["table"].write_text(markdown_table(rows))
    paths["per_clip"].write_text(json.dumps({"settings": settings, "per_clip": list(per_clip)}, indent=1) + "\n")
    save_videos(paths["videos"], videos)
    for task in EVAL_TASKS:
        plot = plot_task(task, rows, out_dir / f"{name}.{task}.png")
        if plot is not None:
            paths[f"plot_{task}"] = plot
    return paths
