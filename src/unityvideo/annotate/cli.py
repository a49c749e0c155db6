"""`unityvideo annotate`: turn plain RGB videos into a trainable dataset with teacher models."""

from __future__ import annotations

import argparse
from pathlib import Path

from unityvideo.cli_args import device, integer, number, output_folder

TEACHER_HELP = {
    "depth": "local transformers depth-estimation folder (Depth Anything V1/V2, DPT, ZoeDepth); no built-in",
    "flow": "'dis' (default, OpenCV, no weights), 'dis-fast', 'dis-ultrafast', RAFT weights "
            "(.safetensors/.pth for torchvision's raft_large/raft_small) or a TorchScript file",
    "segmentation": "'mediapipe' (default: people, MediaPipe on OpenCV HOG person crops) or a local "
                    "Mask2Former / MaskFormer / OneFormer / SAM folder",
    "skeleton": "'mediapipe' (default: BlazePose -> COCO-17 on HOG person crops) or a local ViTPose folder",
    "densepose": "a TorchScript file (images -> IUV) or package.module:factory; no built-in",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="annotate RGB videos with teacher models (depth, flow, segmentation, skeleton, DensePose)",
        description="Run teacher models over plain RGB videos and write a UnityVideo dataset (the format "
        "`unityvideo world` writes): per clip an RGB video, one video per modality, raw.npz and "
        "manifest.csv. Without any weights, flow (OpenCV DIS), segmentation (people) and skeleton "
        "(MediaPipe) work out of the box. A rerun skips finished clips; failing clips are logged to "
        "OUT/failures.jsonl, counted and skipped.",
    )
    p.add_argument("--input", type=Path, nargs="+", required=True, metavar="VIDEOS",
                   help="video files and/or folders (searched recursively)")
    p.add_argument("--out", type=output_folder, required=True, help="dataset folder (created if missing)")
    p.add_argument("--modalities", nargs="+", default=None, metavar="NAME",
                   help="modalities to annotate (default: every one with a teacher: flow, segmentation, "
                   "skeleton, plus depth/densepose when their model is given)")
    p.add_argument("--captions", type=Path, default=None,
                   help="CSV or JSONL with columns video,caption (video: path relative to the file, file name "
                   "or stem); videos without one get an empty caption and a warning")
    for name, text in TEACHER_HELP.items():
        p.add_argument(f"--{name}-model", dest=f"{name}_model", default=None, metavar="PATH", help=text)
    p.add_argument("--frames", type=integer(1), default=None,
                   help="cut videos into clips of this many frames (default: each video is one clip)")
    p.add_argument("--stride", type=integer(1), default=None, help="frames between clip starts (default: --frames)")
    p.add_argument("--step", type=integer(1), default=1, help="keep every step-th frame (default 1)")
    p.add_argument("--size", type=integer(1), nargs=2, default=None, metavar=("H", "W"),
                   help="resize frames to H W before annotating (default: keep the video's size)")
    p.add_argument("--split", default="train", help="split column of the manifest (default train)")
    p.add_argument("--flow-max", type=number(0, open_low=True), default=None,
                   help="flow encoding range in pixels (default max(H, W) / 8, the world's)")
    p.add_argument("--device", type=device(), default=None, help="torch device of model teachers (default cuda if available)")
    p.add_argument("--max-clips", type=integer(1), default=None, help="stop after this many clips")
    p.add_argument("--preview", action="store_true", help="also write OUT/preview.png (contact sheet of 2 clips)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from unityvideo.annotate.run import AnnotateSpec, annotate_videos

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    models = {name: getattr(args, f"{name}_model") for name in TEACHER_HELP if getattr(args, f"{name}_model")}
    spec = AnnotateSpec(inputs=args.input, out=args.out, modalities=args.modalities, models=models,
                        captions=args.captions, frames=args.frames, stride=args.stride, step=args.step,
                        size=tuple(args.size) if args.size else None, split=args.split, flow_max=args.flow_max,
                        device=args.device, max_clips=args.max_clips)
    result = annotate_videos(spec)
    per_frame = ", ".join(f"{name} {1000 * seconds / max(result.frames, 1):.0f} ms"
                          for name, seconds in result.teacher_seconds.items())
    print(f"annotated {result.annotated} clips ({result.skipped} already there, {result.failed} failed"
          f"{', see ' + str(args.out / 'failures.jsonl') if result.failed else ''}) in {result.seconds:.1f} s; "
          f"per frame: {per_frame or 'n/a'}; manifest: {result.manifest}")
    if args.preview and result.manifest.is_file():
        from unityvideo.world.preview import write_contact_sheet

        print(f"preview: {write_contact_sheet(result.manifest, args.out / 'preview.png')}")
    return 1 if result.failed and not (result.annotated or result.skipped) else 0
