"""Where do DensePose estimates go wrong: at the encoding's background margin, or in the model?

The IUV encoding puts background at R = 0 and part I at R = 10 * I, so rounding noise next to the
background decodes as part 1; hallucinated bodies carry higher parts. This script estimates DensePose
on held-out clips (single samples, no ensemble) and counts, per clip, on the decoded part indices: the
GT body pixels found, the false body pixels and how many of those are part 1, one part step from the
background.

With --ensembles K..., it also draws max(K) samples per clip and combines the first K of them two
ways: the library's two-level vote (`Modality.combine`: body or background by majority, then the
part) and a one-level vote over the 25 labels, and scores both on the clips with people (part mIoU,
body IoU, body pixels) and the person-free ones (how many come out empty).

    python benchmarks/densepose_errors.py --data out/demo/world/<world> [--checkpoint DIR] [--clips 8]
    python benchmarks/densepose_errors.py --data out/tune-world --clips 16 --steps 4 --ensembles 4 16

Writes benchmarks/results/densepose_errors.json and prints one row per clip (and per vote and K).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from perf_common import estimate_parser, run_benchmark
from unityvideo.assets import checkpoint_label
from unityvideo.eval.metrics import densepose_metrics
from unityvideo.eval.runner import load_eval_clips, resolve_manifest, select_records
from unityvideo.modalities import _mode, get_modality
from unityvideo.pipeline import UnityVideoPipeline

RESULTS = Path(__file__).resolve().parent / "results" / "densepose_errors.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = estimate_parser(__doc__, clips=8)
    parser.add_argument("--steps", type=int, default=16, help="denoising steps per estimate")
    parser.add_argument("--ensembles", type=int, nargs="*", default=[], metavar="K",
                        help="also compare the two votes over K samples per clip")
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


def one_level_vote(parts: np.ndarray) -> np.ndarray:
    """(K, ...) part samples -> the per-pixel most frequent of the 25 labels (ties: the lowest), the
    vote `Modality.combine` used before its two-level one."""
    return _mode(np.asarray(parts).astype(np.int64), 25)


def vote_scores(part: np.ndarray, gt_part: np.ndarray) -> dict:
    """One combined estimate's part mIoU (the metric's rules), body IoU and body pixel counts."""
    as_iuv = lambda p: np.stack([p, np.zeros_like(p), np.zeros_like(p)], -1).astype(np.float32)
    body, found = gt_part > 0, part > 0
    union = (body | found).sum()
    return {"part_miou": densepose_metrics(as_iuv(part), as_iuv(gt_part))["part_miou"],
            "body_iou": float((body & found).sum() / union) if union else 1.0,
            "body_px": int(found.sum()), "gt_body_px": int(body.sum())}


def _samples(pipe, clip, steps: int, k: int, seed: int) -> np.ndarray:
    """k DensePose estimates of one clip, as encoded frames (k, F, H, W, 3)."""
    generator = torch.Generator().manual_seed(seed + clip.index)
    return np.stack([pipe(prompt=[""], task="estimate", modalities=["densepose"], video=clip.rgb[None],
                          num_inference_steps=steps, generator=[generator]).frames["densepose"][0]
                     for _ in range(k)])


def compare_votes(pipe, clips, steps: int, ensembles: list[int], seed: int) -> list[dict]:
    densepose, rows = get_modality("densepose"), []
    for clip in clips:
        samples = _samples(pipe, clip, steps, max(ensembles), seed)
        parts = densepose.decode(samples.reshape(-1, *samples.shape[2:]))[..., 0].reshape(samples.shape[:-1])
        gt_part = clip.raw["densepose"][..., 0]
        for k in ensembles:
            two_level = densepose.decode(densepose.combine(list(samples[:k])))[..., 0]
            for vote, part in (("two-level", two_level), ("one-level", one_level_vote(parts[:k]))):
                rows.append({"clip_id": clip.clip_id, "ensemble": k, "vote": vote, **vote_scores(part, gt_part)})
    return rows


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
    votes = compare_votes(pipe, clips, args.steps, args.ensembles, args.seed) if args.ensembles else []
    return {"benchmark": "densepose_errors", "checkpoint": checkpoint_label(args.checkpoint), "data": str(args.data),
            "steps": args.steps, "clips": rows, "votes": votes}


def render_votes(votes: list[dict]) -> list[str]:
    lines = ["| K | vote | part mIoU, all clips | with people: part mIoU | body IoU | body px / GT | "
             "person-free clips left empty |", "|---|---|---|---|---|---|---|"]
    for k, vote in dict.fromkeys((r["ensemble"], r["vote"]) for r in votes):
        rows = [r for r in votes if (r["ensemble"], r["vote"]) == (k, vote)]
        people = [r for r in rows if r["gt_body_px"]]
        empty = [r for r in rows if not r["gt_body_px"]]
        mean = lambda key, rs: np.mean([r[key] for r in rs]) if rs else float("nan")
        lines.append(f"| {k} | {vote} | {mean('part_miou', rows):.3f} | {mean('part_miou', people):.3f} | "
                     f"{mean('body_iou', people):.3f} | {sum(r['body_px'] for r in people)} / "
                     f"{sum(r['gt_body_px'] for r in people)} | {sum(r['body_px'] == 0 for r in empty)} of {len(empty)} |")
    return lines


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
    if result.get("votes"):
        lines = render_votes(result["votes"]) + [""] + lines
    return "\n".join(lines)


def main(argv=None) -> None:
    run_benchmark(parse_args(argv), measure, render)


if __name__ == "__main__":
    main()
