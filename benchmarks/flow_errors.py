"""Where do flow estimates lose to zero flow: on the pixels that do not move, or on those that do?

Zero flow is exact wherever nothing moves, so a model beats it only if its estimate is near zero
there too. This script estimates flow on held-out clips (one step, the x0 prediction, as the demo
does) as single samples and as ensembles of K, and splits each clip's end-point error into the
still pixels (GT flow under --still px) and the moving ones. On still pixels the error is the
estimate's own magnitude, and the length of its mean vector says how much of that is a bias shared
by the whole clip rather than per-pixel noise that an ensemble averages away. Pixels without a
defined GT flow are left out, as in the evaluation.

    python benchmarks/flow_errors.py --data out/tune-world [--checkpoint DIR] [--clips 16] [--ensembles 1 16]

Writes benchmarks/results/flow_errors.json and prints one row per clip and a mean row per K.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from perf_common import estimate_parser, run_benchmark
from unityvideo.assets import checkpoint_label
from unityvideo.eval.runner import load_eval_clips, resolve_manifest, select_records
from unityvideo.pipeline import UnityVideoPipeline

RESULTS = Path(__file__).resolve().parent / "results" / "flow_errors.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = estimate_parser(__doc__, clips=16)
    parser.add_argument("--steps", type=int, default=1, help="denoising steps per estimate")
    parser.add_argument("--ensembles", type=int, nargs="+", default=[1, 16], metavar="K")
    parser.add_argument("--still", type=float, default=0.05, help="GT flow below this many px counts as still")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def clip_errors(pred: np.ndarray, gt: np.ndarray, still: float = 0.05, valid: np.ndarray | None = None) -> dict:
    """One clip's EPE split by GT motion: pred and gt are (F, H, W, 2) flow in pixels; only `valid`
    pixels count (default all), as in `flow_metrics`."""
    if valid is not None:
        pred, gt = pred[valid], gt[valid]
    moving = np.linalg.norm(gt, axis=-1) >= still
    error = np.linalg.norm(pred - gt, axis=-1)
    bias = pred[~moving].mean(axis=0) if (~moving).any() else np.zeros(2)
    return {"still_share": float((~moving).mean()), "epe": float(error.mean()),
            "zero_epe": float(np.linalg.norm(gt, axis=-1).mean()),
            "still_epe": _mean(error[~moving]), "still_bias_px": float(np.linalg.norm(bias)) if (~moving).any() else None,
            "moving_epe": _mean(error[moving]), "moving_zero_epe": _mean(np.linalg.norm(gt[moving], axis=-1))}


def measure(args: argparse.Namespace) -> dict:
    pipe = UnityVideoPipeline.from_pretrained(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    records = select_records(resolve_manifest(args.data), "test")[:args.clips]
    clips, _ = load_eval_clips(records, pipe.spec.frames, tuple(pipe.spec.size), ["flow"])
    runs = []
    for k in args.ensembles:
        rows = []
        for clip in clips:  # one clip per call: each keeps its own flow range (decode hint)
            out = pipe(prompt=[""], task="estimate", modalities=["flow"], video=clip.rgb[None],
                       num_inference_steps=args.steps, ensemble_size=k,
                       generator=[torch.Generator().manual_seed(args.seed + clip.index)],
                       decode_hints={"flow": clip.hints})
            rows.append({"clip_id": clip.clip_id, **clip_errors(out.raw["flow"][0], clip.raw["flow"], args.still,
                                                                  clip.flow_valid)})
        runs.append({"ensemble": k, "clips": rows})
    return {"benchmark": "flow_errors", "checkpoint": checkpoint_label(args.checkpoint), "data": str(args.data),
            "steps": args.steps, "still_px": args.still, "runs": runs}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(result: dict) -> str:
    keys = ["epe", "zero_epe", "still_epe", "still_bias_px", "moving_epe", "moving_zero_epe"]
    lines = ["| K | clip | still share | EPE | zero flow | still EPE | still bias | moving EPE | moving zero |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        for r in run["clips"]:
            lines.append(f"| {run['ensemble']} | {r['clip_id']} | {r['still_share']:.0%} | "
                         + " | ".join(_cell(r[k]) for k in keys) + " |")
    for run in result["runs"]:
        means = {k: np.mean([r[k] for r in run["clips"] if r[k] is not None]) for k in keys}
        lines.append(f"mean K={run['ensemble']}: " + ", ".join(f"{k} {means[k]:.3f}" for k in keys))
    return "\n".join(lines)


def main(argv=None) -> None:
    run_benchmark(parse_args(argv), measure, render)


if __name__ == "__main__":
    main()
