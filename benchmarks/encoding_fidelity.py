"""How exactly do the modality videos on disk reproduce the world's raw ground truth?

Renders clips with `unityvideo world`, reads every modality video back, decodes it and scores it
against raw.npz. Usage: python benchmarks/encoding_fidelity.py [--clips 16] [--sizes 64 128]
Writes benchmarks/results/encoding_fidelity.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from unityvideo.data import load_raw, read_manifest, read_video
from unityvideo.modalities import get_modality
from unityvideo.world.export import ExportSpec, export_world

RESULTS = Path(__file__).parent / "results" / "encoding_fidelity.json"


def keypoint_errors(gt: np.ndarray, est: np.ndarray) -> tuple[list[float], int]:
    """Errors of joints present in both after per-frame Hungarian matching, and the GT joint count."""
    errors, total = [], int((gt[..., 2] > 0).sum())
    for g, e in zip(gt, est):
        if len(g) == 0 or len(e) == 0:
            continue
        dist = np.linalg.norm(g[:, None, :, :2] - e[None, :, :, :2], axis=-1)  # (Pg, Pe, 17)
        both = (g[:, None, :, 2] > 0) & (e[None, :, :, 2] > 0)
        cost = np.where(both, dist, 50.0).mean(-1)
        for i, j in zip(*linear_sum_assignment(cost)):
            errors += list(dist[i, j][both[i, j]])
    return errors, total


def score(records) -> dict:
    depth, flow, clipped, seg, part, uv, kp, kp_total = [], [], [], [], [], [], [], 0
    for r in records:
        raw = load_raw(r.raw)

        def decoded(name):
            return get_modality(name).decode(read_video(r.modalities[name]), **r.hints())

        d, finite = decoded("depth"), np.isfinite(raw["depth"])
        depth.append(np.mean(np.abs(d[finite] - raw["depth"][finite]) / raw["depth"][finite]))
        flow.append(np.linalg.norm(decoded("flow") - raw["flow"], axis=-1).mean())
        clipped.append(np.mean(np.abs(raw["flow"]).max(-1) > r.flow_max))
        seg.append(np.mean(decoded("segmentation") == raw["segmentation"]))
        iuv = decoded("densepose")
        part.append(np.mean(iuv[..., 0] == raw["densepose"][..., 0]))
        uv.append(np.abs(iuv[..., 1:] - raw["densepose"][..., 1:]).max() * 255)
        errors, total = keypoint_errors(raw["skeleton"], decoded("skeleton"))
        kp += errors
        kp_total += total
    kp = np.array(kp)
    return {
        "depth_abs_rel": float(np.mean(depth)), "flow_epe_px": float(np.mean(flow)),
        "flow_clipped_fraction": float(np.mean(clipped)), "segmentation_pixel_accuracy": float(np.mean(seg)),
        "densepose_part_accuracy": float(np.mean(part)), "densepose_uv_max_error_x255": float(np.max(uv)),
        "keypoint_median_error_px": float(np.median(kp)), "keypoints_within_1px": float(np.mean(kp <= 1.0)),
        "keypoints_decoded_fraction": float(len(kp) / max(kp_total, 1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=(64, 128))
    args = parser.parse_args()
    results = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            export_world(ExportSpec(out=Path(tmp), clips=args.clips, frames=args.frames, size=(size, size)))
            results[f"{args.frames}x{size}x{size}"] = score(read_manifest(Path(tmp) / "manifest.csv"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"clips": args.clips, "results": results}, indent=2))
    keys = list(next(iter(results.values())))
    print("| measure | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{v[k]:.4g}" for v in results.values()) + " |")


if __name__ == "__main__":
    main()
