"""`unityvideo world`: render procedural clips as a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from unityvideo.cli_args import integer, output_folder


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "world",
        help="render procedural clips with exact ground truth for every modality",
        description="Render procedural-world clips as a UnityVideo dataset: an RGB video and five "
        "modality videos per clip, the raw ground truth as .npz, and manifest.csv. "
        "Rerunning into the same folder skips finished clips.",
    )
    p.add_argument("--out", type=output_folder, required=True, help="dataset folder (created if missing)")
    p.add_argument("--clips", type=integer(1), required=True, help="number of clips to render")
    p.add_argument("--frames", type=integer(1), default=16, help="frames per clip (default 16)")
    p.add_argument("--size", type=integer(1), nargs=2, default=(64, 64), metavar=("H", "W"),
                   help="frame height and width in pixels (default 64 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; clip i of a split is a pure function of (seed, split, i)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="train and test clips never share a scene")
    p.add_argument("--fps", type=integer(1), default=8, help="frame rate of the simulation and the videos")
    p.add_argument("--workers", type=integer(1), default=None, help="render processes (default: all cores)")
    p.add_argument("--preview", action="store_true",
                   help="also write preview.png: a contact sheet (rows: modalities, columns: time)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unityvideo.world.export import ExportSpec, export_world

    spec = ExportSpec(out=args.out, clips=args.clips, frames=args.frames, size=tuple(args.size),
                      seed=args.seed, split=args.split, fps=args.fps, workers=args.workers)
    result = export_world(spec)
    print(f"wrote {result.rendered} clips ({result.skipped} already there) to {args.out} "
          f"in {result.seconds:.1f} s; manifest: {result.manifest}")
    if args.preview:
        from unityvideo.world.preview import write_contact_sheet

        print(f"preview: {write_contact_sheet(result.manifest, args.out / 'preview.png')}")
    return 0
