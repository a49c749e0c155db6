"""How much of a modality survives a regression's kind of error: the ground truth's picture blurred (a
posterior mean under spatial uncertainty) and shifted by noise (a model off by some levels), decoded and
scored with the pooled metrics. A picture format a regression can learn keeps its score under both.

    unityvideo world --out W --clips 16 --frames 8 --size 64 64 --seed 5 --fps 8 --split test
    python benchmarks/encoding_robustness.py --data W --out benchmarks/results/encoding_robustness.json

DensePose is scored twice: with this version's format and with the earlier one (R = 10 I, G = 255 U,
B = 255 V, which loses a part whenever R is off by 5 levels), kept here only for the comparison. The
skeleton's earlier formats (2: a fixed colour per joint and limb) are not kept; their figures, measured
by this script when they were current, are in docs/world.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from unityvideo.eval.metrics import modality_scores, pool
from unityvideo.eval.runner import load_eval_clips, resolve_manifest, select_records
from unityvideo.modalities import get_modality

BLURS = (0.0, 0.5, 1.0, 2.0)  # Gaussian sigma in pixels, within each frame
NOISES = (0.0, 8.0, 16.0)     # std of a per-pixel shift, in levels of 255
PRIMARY = {"densepose": "part_miou", "skeleton": "pck@0.1", "segmentation": "miou"}


def encode_iuv_r10(iuv: np.ndarray, **_) -> np.ndarray:
    """The earlier DensePose format: the IUV file layout with the part index scaled by 10."""
    part = np.rint(iuv[..., 0]).clip(0, 24)
    uv = iuv[..., 1:].clip(0, 1) * (part > 0)[..., None]
    return np.clip(np.rint(np.concatenate([10 * part[..., None], 255 * uv], -1)), 0, 255).astype(np.uint8)


def decode_iuv_r10(frames: np.ndarray, **_) -> np.ndarray:
    frames = frames.astype(np.float32)
    part = np.rint(frames[..., 0] / 10).clip(0, 24)
    return np.concatenate([part[..., None], frames[..., 1:] / 255 * (part > 0)[..., None]], -1)


FORMATS = {
    "densepose": get_modality("densepose"),
    "densepose (earlier R = 10 I)": (encode_iuv_r10, decode_iuv_r10),
    "skeleton": get_modality("skeleton"),
    "segmentation": get_modality("segmentation"),
}


def degrade(frames: np.ndarray, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    x = frames.astype(np.float32)
    if blur > 0:
        x = ndimage.gaussian_filter(x, sigma=(0, blur, blur, 0))
    if noise > 0:
        x = x + rng.normal(0, noise, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def measure(data: Path, clips: int | None, seed: int = 0) -> dict:
    records = select_records(resolve_manifest(data), "test")[:clips]
    first = records[0]
    size = (int(first.height), int(first.width))
    test, _ = load_eval_clips(records, int(first.frames), size, ["densepose", "skeleton", "segmentation"])
    result = {"data": str(data), "clips": len(test), "size": list(size), "formats": {}}
    for label, fmt in FORMATS.items():
        modality = label.split()[0]
        encode, decode = (fmt.encode, fmt.decode) if hasattr(fmt, "encode") else fmt
        rng = np.random.default_rng(seed)
        table = {}
        for blur in BLURS:
            for noise in NOISES:
                scores = []
                for clip in test:
                    gt, options = clip.raw[modality], clip.metric_options(modality)
                    picture = encode(gt, size=size)
                    scores.append(modality_scores(modality, decode(degrade(picture, blur, noise, rng), size=size),
                                                  gt, **options))
                table[f"blur {blur} / noise {noise}"] = round(pool(scores)[PRIMARY[modality]], 3)
        result["formats"][label] = {"metric": PRIMARY[modality], "scores": table}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a world folder with test clips")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--out", type=Path, help="results .json")
    args = parser.parse_args(argv)
    result = measure(args.data, args.clips)
    for label, row in result["formats"].items():
        print(f"{label} ({row['metric']}):")
        for setting, value in row["scores"].items():
            print(f"  {setting:24s} {value:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
