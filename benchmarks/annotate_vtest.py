"""Annotate 16 frames of OpenCV's vtest.avi with the built-in teachers, print the per-frame teacher
times and write docs/annotate_vtest.png (rows: rgb, flow, segmentation, skeleton; a crop where people walk).

Usage: python benchmarks/annotate_vtest.py [VTEST] [--out DIR]
VTEST defaults to the test cache (~/.cache/unityvideo-test-data, filled by tests/test_annotate.py).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from unityvideo.annotate.run import AnnotateSpec, annotate_videos
from unityvideo.data import read_manifest
from unityvideo.world.preview import stream_pictures

DEFAULT = Path.home() / ".cache/unityvideo-test-data/opencv-doc/usr/share/doc/opencv-doc/examples/data/vtest.avi"
CROP = (slice(96, 480), slice(128, 768))  # rows, columns of the 576 x 768 frame where people walk
COLUMNS, SCALE, LABEL = 6, 0.5, 100


def contact_sheet(record, out: Path, crop=CROP, title: str | None = None) -> Path:
    pictures = stream_pictures(record)
    frames = len(pictures["rgb"])
    picks = [round(i * (frames - 1) / (COLUMNS - 1)) for i in range(COLUMNS)]
    crop = crop or (slice(0, pictures["rgb"].shape[1]), slice(0, pictures["rgb"].shape[2]))
    tile_h, tile_w = (int((s.stop - s.start) * SCALE) for s in crop)
    sheet = Image.new("RGB", (LABEL + COLUMNS * (tile_w + 2), 24 + len(pictures) * (tile_h + 2)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    draw.text((4, 6), title or f"{record.clip_id}, frames {picks} of a {frames}-frame clip, built-in teachers",
              fill="black", font=font)
    for row, (name, video) in enumerate(pictures.items()):
        y = 24 + row * (tile_h + 2)
        draw.text((4, y + tile_h // 2 - 6), name, fill="black", font=font)
        for col, t in enumerate(picks):
            tile = Image.fromarray(video[t][crop]).resize((tile_w, tile_h), Image.LANCZOS)
            sheet.paste(tile, (LABEL + col * (tile_w + 2), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT)
    parser.add_argument("--out", type=Path, default=None, help="dataset folder (default: a temporary one)")
    parser.add_argument("--sheet", type=Path, default=Path("docs/annotate_vtest.png"))
    parser.add_argument("--full-frame", action="store_true", help="no crop (the default crop is vtest's walkway)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="annotate-vtest-"))
    result = annotate_videos(AnnotateSpec(inputs=[args.video], out=out, frames=16, max_clips=1))
    for name, seconds in result.teacher_seconds.items():
        print(f"{name:13s} {1000 * seconds / result.frames:6.1f} ms/frame at 576x768")
    print(f"total {result.seconds:.1f} s for {result.frames} frames (incl. encoding and writing)")
    crop = None if args.full_frame else CROP
    print(f"contact sheet: {contact_sheet(read_manifest(result.manifest)[0], args.sheet, crop)}")


if __name__ == "__main__":
    main()
