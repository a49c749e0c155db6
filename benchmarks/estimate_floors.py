"""What an estimate is measured against: the bars, the constants, the oracle and the encoding ceiling.

    unityvideo world --out W --clips 64 --frames 8 --size 64 64 --seed 5 --fps 8
    unityvideo world --out W --clips 16 --frames 8 --size 64 64 --seed 5 --fps 8 --split test
    python benchmarks/estimate_floors.py --data W --out benchmarks/results/estimate_floors-64.json

No model is involved: on the test clips of W (at their own size) every baseline of
`unityvideo.eval.baselines` is scored with the pooled metrics (the prior fitted on W's training
split), and so is the encoding ceiling, the ground truth through the modality's video encoding and
back. Beside each pooled figure, the per-clip mean the library used to report, where a clip with
nothing to measure (no part or instance in prediction and reference) scored an IoU of 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from unityvideo.eval.baselines import estimate_baselines
from unityvideo.eval.metrics import MODALITY_NAMES, mean_metrics, modality_metrics, modality_scores, pool
from unityvideo.eval.runner import encoding_ceiling, fit_prior, load_eval_clips, resolve_manifest, select_records


def measure(data: Path, clips: int | None) -> dict:
    manifest = resolve_manifest(data)
    records = select_records(manifest, "test")[:clips]
    first = records[0]
    frames, size = int(first.frames), (int(first.height), int(first.width))
    test, _ = load_eval_clips(records, frames, size, MODALITY_NAMES)
    prior = fit_prior(manifest, frames, size, MODALITY_NAMES)
    result = {"data": str(data), "clips": len(test), "size": list(size), "frames": frames,
              "prior": prior.source if prior else None, "with_people": sum(c.raw["skeleton"].shape[1] > 0 for c in test),
              "modalities": {}}
    for modality in MODALITY_NAMES:
        pooled, per_clip = {}, {}
        for clip in test:
            gt, options = clip.raw[modality], clip.metric_options(modality)
            predictions = [(f"{b.name}{' (oracle)' if b.oracle else ''}", b.prediction)
                           for b in estimate_baselines(modality, prior, gt)]
            predictions.append(("encoding ceiling", encoding_ceiling(modality, clip)))
            for name, prediction in predictions:
                pooled.setdefault(name, []).append(modality_scores(modality, prediction, gt, **options))
                per_clip.setdefault(name, []).append(modality_metrics(modality, prediction, gt, **options))
        result["modalities"][modality] = {
            name: {"pooled": _round(pool(scores)), "per_clip_mean": _round(mean_metrics(map(_old_convention, per_clip[name])))}
            for name, scores in pooled.items()}
    return result


IOU_METRICS = ("miou", "fg_iou", "part_miou", "body_iou")


def _old_convention(metrics: dict) -> dict:
    """A clip's IoUs as the per-clip average scored them: nothing to measure = 1."""
    return {k: 1.0 if k in IOU_METRICS and not np.isfinite(v) else v for k, v in metrics.items()}


def _round(metrics: dict) -> dict:
    return {k: (None if not np.isfinite(v) else round(v, 4)) for k, v in metrics.items()}


def render(result: dict) -> str:
    lines = [f"{result['clips']} test clips of {result['frames']}x{result['size'][0]}x{result['size'][1]} "
             f"({result['with_people']} with people), prior: {result['prior']}",
             "| modality | prediction | pooled | per-clip mean (old) |", "|---|---|---|---|"]
    for modality, found in result["modalities"].items():
        for name, values in found.items():
            text = lambda m: ", ".join(f"{k} {v}" for k, v in m.items())
            lines.append(f"| {modality} | {name} | {text(values['pooled'])} | {text(values['per_clip_mean'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a world folder with a train and a test split")
    p.add_argument("--clips", type=int, default=None, help="test clips (default all)")
    p.add_argument("--out", type=Path, default=None, help="results JSON")
    args = p.parse_args(argv)
    result = measure(args.data, args.clips)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
