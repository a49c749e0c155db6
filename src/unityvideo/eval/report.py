"""A static HTML report of an evaluation: notes, videos side by side, the loss curve, the metrics table.

    write_report("eval/", rows, load_videos("eval/results.videos.json"), loss_curve_png="run/loss.png",
                 notes={"training": "from scratch, 4000 steps, 52 min on one H100"})

The page is one self-contained file with relative links to the pictures beside it (media/), a small
inline stylesheet, no script and nothing fetched from the network. Videos are animated WebP (lossless;
GIF where Pillow lacks WebP), which every current browser plays without a codec, upscaled with nearest
neighbour so small clips stay crisp. `screenshot_report` renders the page with headless Chromium.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, features

from unityvideo.browser import find_chromium, screenshot
from unityvideo.eval.compare import FRACTION_EFFECT, RELATIVE_EFFECT, is_better
from unityvideo.eval.results import EVAL_TASKS, bar_text, interval_text, number_text, references_text

__all__ = ["write_report", "save_animation", "plot_loss_curve", "screenshot_report", "find_chromium"]

MIN_SIDE = 128  # smallest displayed side in pixels
TASK_TITLES = {
    "estimate": "Estimation: RGB → modality",
    "control": "Controllable generation: modality → RGB",
    "joint": "Joint generation: caption → RGB + modality",
    "t2v": "Text to video: caption → RGB",
}

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #1d1d1f; background: #fff; }
h1 { font-size: 24px; margin: 0 0 8px; } h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #ddd;
     padding-bottom: 4px; }
dl.notes { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.notes dt { font-weight: 600; color: #555; } dl.notes dd { margin: 0; }
nav a { margin-right: 12px; }
.panels { display: flex; flex-wrap: wrap; gap: 10px 32px; }
.panel { display: table; margin: 8px 0; }  /* a table so the caption wraps at the width of the videos */
.panel p { display: table-caption; caption-side: top; margin: 0 0 4px; color: #444; font-size: 13px; }
.panel p b { color: #1d1d1f; }
.cells { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; } figure img { display: block; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 12px; color: #555; text-align: center; margin-top: 2px; }
table { border-collapse: collapse; font-size: 13px; } th, td { padding: 3px 10px; border-bottom: 1px solid #e5e5e5; }
th { text-align: left; background: #f5f5f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.better { background: #dff3e4; color: #14632b; } td.worse { background: #fbe3e3; color: #8a1c1c; }
.small { font-size: 12px; color: #666; }
img.plot { max-width: 100%; border: 1px solid #eee; margin: 0 8px 8px 0; vertical-align: top; }
"""


# ----- media ------------------------------------------------------------------------------------------


def _upscale(frames: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Repeat pixels so the smaller side is at least `min_side` (nearest neighbour)."""
    factor = max(1, -(-min_side // min(frames.shape[1:3])))
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def animation_suffix() -> str:
    return ".webp" if features.check("webp") else ".gif"


def save_animation(path: Path, frames: np.ndarray, fps: float = 8.0, min_side: int = MIN_SIDE) -> Path:
    """uint8 (F, H, W, 3) (or (F, H, W)) -> a looping animated image at `path` (.webp lossless or .gif)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise ValueError(f"save_animation: expected uint8 frames (F, H, W[, 3]), got {frames.dtype} {frames.shape}")
    images = [Image.fromarray(f) for f in _upscale(frames, min_side)]
    options: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": round(1000 / fps), "loop": 0}
    if path.suffix == ".webp":
        options |= {"lossless": True, "method": 4}
    images[0].save(path, **options)
    return path


def plot_loss_curve(metrics: str | Path | Sequence[Mapping], png: str | Path, key: str = "loss") -> Path:
    """A loss curve from a training run's metrics.jsonl (rows {"step", "kind", key, ...}) or those rows."""
    if isinstance(metrics, (str, Path)):
        metrics = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    for kind in dict.fromkeys(r.get("kind", "train") for r in metrics):
        points = [(r["step"], r[key]) for r in metrics if r.get("kind", "train") == kind
                  and isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), label=kind, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return Path(png)


# ----- HTML pieces ------------------------------------------------------------------------------------


def _notes_html(notes: Mapping[str, Any]) -> str:
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in notes.items())
    return f'<dl class="notes">{items}</dl>' if items else ""


def _videos_html(out_dir: Path, videos: Sequence[Mapping], fps: float) -> dict[str, str]:
    """Per task, its panels: a caption line, then one animated image per cell."""
    media = out_dir / "media"
    media.mkdir(parents=True, exist_ok=True)
    suffix = animation_suffix()
    sections: dict[str, list[str]] = {}
    for i, panel in enumerate(videos):
        figures = []
        for j, cell in enumerate(panel["cells"]):
            name = f"{i:03d}-{panel['task']}-{panel['modality']}-{j}{suffix}"
            save_animation(media / name, cell["frames"], fps)
            figures.append(f'<figure><img src="media/{html.escape(name)}" alt="{html.escape(cell["label"])}">'
                           f'<figcaption>{html.escape(cell["label"])}</figcaption></figure>')
        title = f"<b>{html.escape(panel['modality'])}</b> · {html.escape(panel['clip_id'])}"
        caption = f" — “{html.escape(panel['caption'])}”" if panel.get("caption") else ""
        sections.setdefault(panel["task"], []).append(
            f'<div class="panel"><p>{title}{caption}</p><div class="cells">{"".join(figures)}</div></div>')
    return {task: "\n".join(parts) for task, parts in sections.items()}


def _table_html(rows: Sequence[Mapping]) -> str:
    head = ("<tr><th>task</th><th>modality</th><th>metric</th><th>model</th><th>baseline</th>"
            "<th>gain, 95% CI</th><th>verdict</th><th>also shown</th></tr>")
    body = []
    for row in rows:
        css = {True: "better", False: "worse", None: ""}[is_better(row)]
        arrow = "↑" if row["higher_is_better"] else "↓"
        metric = html.escape(row["metric"])
        metric = f"<b>{metric}</b>" if row.get("primary") else metric
        body.append(f"<tr><td>{html.escape(row['task'])}</td><td>{html.escape(row['modality'])}</td>"
                    f"<td>{metric} {arrow}</td><td class=\"num {css}\">{number_text(row['model'])}</td>"
                    f"<td class=\"num\">{html.escape(bar_text(row))}</td>"
                    f"<td class=\"num\">{html.escape(interval_text(row))}</td>"
                    f"<td class=\"{css}\">{html.escape(row.get('verdict') or '–')}</td>"
                    f"<td class=\"small\">{html.escape(references_text(row))}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _local_copy(out_dir: Path, path: str | Path) -> str:
    """A relative link to `path`, copying it beside the report when it lives elsewhere."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"loss curve {path} does not exist; pass a PNG or leave it out")
    target = out_dir / path.name
    if path.resolve() != target.resolve():
        shutil.copyfile(path, target)
    return target.name


def write_report(out_dir: str | Path, rows: Sequence[Mapping], videos: Sequence[Mapping],
                 loss_curve_png: str | Path | None = None, notes: Mapping[str, Any] | None = None,
                 plots: Sequence[str | Path] = (), fps: float = 8.0, title: str = "UnityVideo evaluation") -> Path:
    """Write out_dir/report.html (+ out_dir/media/): header notes, per task its video panels, the loss
    curve, the bar charts in `plots`, and the metrics table with better / worse highlighted.

    rows: metric rows of `runner.evaluate`; videos: panels {"task", "modality", "clip_id", "caption",
    "cells": [{"label", "frames" uint8 (F, H, W, 3)}]} (`results.load_videos`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = _videos_html(out_dir, videos, fps)
    tasks = [t for t in EVAL_TASKS if t in sections] + [t for t in sections if t not in EVAL_TASKS]
    parts = [f"<header><h1>{html.escape(title)}</h1>{_notes_html(notes or {})}</header>"]
    links = [f'<a href="#{t}">{html.escape(t)}</a>' for t in tasks]
    links += ['<a href="#loss">loss</a>'] if loss_curve_png else []
    links += ['<a href="#metrics">metrics</a>']
    parts.append(f"<nav>{''.join(links)}</nav>")
    for task in tasks:
        parts.append(f'<section id="{html.escape(task)}"><h2>{html.escape(TASK_TITLES.get(task, task))}</h2>'
                     f'<div class="panels">{sections[task]}</div></section>')
    if loss_curve_png:
        parts.append(f'<section id="loss"><h2>Training loss</h2><img class="plot" '
                     f'src="{html.escape(_local_copy(out_dir, loss_curve_png))}" alt="loss curve"></section>')
    plot_html = "".join(f'<img class="plot" src="{html.escape(_local_copy(out_dir, p))}" '
                        f'alt="{html.escape(Path(p).stem)}">' for p in plots)
    parts.append('<section id="metrics"><h2>Metrics</h2><p class="small">Every metric pooled over the clips; '
                 "<b>bold</b>: the modality's primary metric. The baseline is the bar to beat: for estimation a "
                 "prior fitted on the training split (never the clip's own ground truth), for control and joint "
                 "generation the same output scored against an unrelated clip's signal. The gain's interval is a "
                 "95% bootstrap over clips (positive = the model is better); the verdict is <i>better</i> only "
                 f"when that interval lies above zero and the gain is at least {FRACTION_EFFECT:g} (fractions) or "
                 f"{RELATIVE_EFFECT:.0%} of the baseline (errors). Also shown, never coloured: oracles, the "
                 "encoding's ceiling and the real clips' quality proxies (a frozen video would beat them on SSIM). "
                 "Metrics prefixed dis_ use OpenCV's DIS flow as an independent teacher.</p>"
                 f"{plot_html}{_table_html(rows)}</section>")
    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def report_from_results(out_dir: str | Path, name: str = "results", loss_curve: str | Path | None = None,
                        notes: Mapping[str, Any] | None = None, report_dir: str | Path | None = None,
                        title: str = "UnityVideo evaluation") -> Path:
    """report.html from the files `runner.evaluate(..., out_dir, name=name)` wrote: its rows, kept videos
    and bar charts; `loss_curve` is a PNG or a training run's metrics.jsonl (plotted)."""
    from .results import load_videos

    out_dir = Path(out_dir)
    report_dir = Path(report_dir or out_dir)
    rows = json.loads((out_dir / f"{name}.json").read_text())
    if loss_curve is not None and Path(loss_curve).suffix.lower() == ".jsonl":
        loss_curve = plot_loss_curve(loss_curve, report_dir / "loss.png")
    plots = [out_dir / f"{name}.{t}.png" for t in EVAL_TASKS if (out_dir / f"{name}.{t}.png").is_file()]
    return write_report(report_dir, rows, load_videos(out_dir / f"{name}.videos.json"), loss_curve_png=loss_curve,
                        notes=notes, plots=plots, title=title)


# ----- rendering check --------------------------------------------------------------------------------


def screenshot_report(html_path: str | Path, png: str | Path, width: int = 1280, height: int = 2000,
                      timeout: float = 120.0) -> Path | None:
    """Render `html_path` with headless Chromium into `png`; None when no Chromium is installed
    (Debian: apt-get install chromium)."""
    if find_chromium() is None:
        return None
    return screenshot(html_path, png, width, height, timeout=timeout)
