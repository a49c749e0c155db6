"""Where do DensePose estimates go wrong: at the encoding's background margin, or in the model?

The IUV encoding puts background at R = 0 and part I at R = 10 * I, so rounding noise next to the
background decodes as part 1; hallucinated bodies carry higher parts. This script estimates DensePose
on held-out clips (single samples, no ensemble) and counts, per clip, on the decoded part indices: the
GT body pixels found, the false body pixels and how many of those are part 1, one part step from the
background.

    python benchmarks/densepose_errors.py --data out/demo/world/<world> [--checkpoint DIR] [--clips 8]

Writes benchmarks/results/densepose_errors.json and prints one row per clip.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from unityvideo.assets import DEFAULT_CHECKPOINT, checkpoint_label
from unityvideo.eval.runner import load_eval_clips, resolve_manifest, select_records
from unityvideo.pipeline import UnityVideoPipeline

RESULTS = Path(__file__).resolve().parent / "results" / "densepose_errors.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="default: the shipped one")
    parser.add_argument("--data", type=Path, required=True, help="a world folder with a test split")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16, help="denoising steps per estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def clip_errors(part: np.ndarray, gt_part: np.ndarray) -> dict:
    """Counts for one clip from the estimate's and the GT's part indices (0 = background)."""
    body, found = gt_part > 0, part > 0
    false = found & ~body
    return {"gt_body_px": int(body.sum()), "found_body_px": int((found & body).sum()),
            "false_body_px": int(false.sum()), "false_at_margin_px": int((false & (part == 1)).sum()),
            "false_median_part": float(np.median(part[false])) if false.any() else None}


def measure(args: argparse.Namespace) -> dict:
    pipe = UnityVideoPipeline.from_pretrained(args.checkpoint)
    pipe.set_progress_bar_config(disable=True)
    records = select_records(resolve_manifest(args.data), "test")[:args.clips]
    clips, _ = load_eval_clips(records, pipe.spec.frames, tuple(pipe.spec.size), ["densepose"])
    out = pipe(prompt=[""] * len(clips), task="estimate", modalities=["densepose"],
               video=np.stack([c.rgb for c in clips]), num_inference_steps=args.steps,
               generator=[torch.Generator().manual_seed(args.seed + c.index) for c in clips])
    rows = [{"clip_id": c.clip_id, **clip_errors(iuv[..., 0], c.raw["densepose"][..., 0])}
            for c, iuv in zip(clips, out.raw["densepose"])]
    return {"benchmark": "densepose_errors", "checkpoint": checkpoint_label(args.checkpoint), "data": str(args.data),
            "steps": args.steps, "clips": rows}


def render(result: dict) -> str:
    lines = ["| clip | GT body px | found | false body px | of which at the margin | median false part |",
             "|---|---|---|---|---|---|"]
    for r in result["clips"]:
        part = "–" if r["false_median_part"] is None else f"{r['false_median_part']:.0f}"
        lines.append(f"| {r['clip_id']} | {r['gt_body_px']} | {r['found_body_px']} | {r['false_body_px']} | "
                     f"{r['false_at_margin_px']} | {part} |")
    false = sum(r["false_body_px"] for r in result["clips"])
    margin = sum(r["false_at_margin_px"] for r in result["clips"])
    lines.append(f"false body pixels: {false}, of which {margin} within one part step of the background")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))


if __name__ == "__main__":
    main()
