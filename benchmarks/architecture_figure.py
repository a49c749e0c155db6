"""Draw docs/architecture.png: the rooms of the package and how data flows between them.

    python benchmarks/architecture_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# name: (x, y, lines below the name)
ROOMS = {
    "world/": (0.5, 4.2, "procedural scenes,\nexact ground truth"),
    "annotate/": (0.5, 2.6, "teachers on your videos\n(flow, people, skeleton, ...)"),
    "data/": (3.0, 3.4, "manifest, video IO,\naligned clips"),
    "modalities.py": (3.0, 1.6, "registry: encode / decode /\nvisualize each modality"),
    "flow.py": (5.5, 4.6, "task table, timesteps,\nflow-matching loss"),
    "training/": (5.5, 3.1, "config, curriculum,\ntrainer, DDP / FSDP2"),
    "models/": (8.0, 3.1, "transformer, text, codec,\ncheckpoint spec, LoRA, convert"),
    "pipeline.py": (8.0, 1.6, "UnityVideoPipeline:\nevery task at inference"),
    "eval/": (10.5, 3.1, "metrics, baselines,\nreport"),
    "generate / app / demo": (10.5, 1.0, "command line,\nweb page, demo"),
}
FLOWS = [("world/", "data/"), ("annotate/", "data/"), ("data/", "training/"), ("modalities.py", "data/"),
         ("flow.py", "training/"), ("training/", "models/"), ("models/", "pipeline.py"), ("flow.py", "pipeline.py"),
         ("pipeline.py", "eval/"), ("pipeline.py", "generate / app / demo"), ("modalities.py", "pipeline.py")]
W, H = 2.25, 1.0


def edge(x, y, tx, ty, pad=0.1):
    """Where the line from a box's centre (x, y) toward (tx, ty) leaves the box (plus `pad`)."""
    dx, dy = tx - x, ty - y
    t = min((W / 2 + pad) / abs(dx) if dx else float("inf"), (H / 2 + pad) / abs(dy) if dy else float("inf"))
    return x + t * dx, y + t * dy


def main(out: Path = Path("docs/architecture.png")) -> Path:
    fig, ax = plt.subplots(figsize=(13, 6))
    for name, (x, y, text) in ROOMS.items():
        ax.add_patch(FancyBboxPatch((x - W / 2, y - H / 2), W, H, boxstyle="round,pad=0.05", fc="#eef3fb", ec="#3a5a8c"))
        ax.text(x, y + 0.22, name, ha="center", va="center", fontsize=10.5, weight="bold", family="monospace")
        ax.text(x, y - 0.15, text, ha="center", va="center", fontsize=8.5)
    for a, b in FLOWS:
        (xa, ya, _), (xb, yb, _) = ROOMS[a], ROOMS[b]
        ax.add_patch(FancyArrowPatch(edge(xa, ya, xb, yb), edge(xb, yb, xa, ya), arrowstyle="-|>",
                                     mutation_scale=14, color="#777", shrinkA=0, shrinkB=0))
    ax.set_xlim(-0.8, 12.0), ax.set_ylim(0.2, 5.3), ax.axis("off")
    ax.set_title("UnityVideo: rooms and data flow (arrows: who feeds whom)", fontsize=12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


if __name__ == "__main__":
    print(main())
