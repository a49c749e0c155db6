"""Contact sheets: a picture of a dataset's clips, one row per stream, one column per sampled frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unityvideo.data.manifest import ClipRecord, read_manifest
from unityvideo.data.video import read_video
from unityvideo.modalities import MODALITY_NAMES, get_modality

LABEL_WIDTH = 110
CAPTION_HEIGHT = 22
GAP = 6


def stream_pictures(record: ClipRecord) -> dict[str, np.ndarray]:
    """Read a clip's videos back from disk and turn each into the picture people expect to see."""
    pictures = {"rgb": read_video(record.rgb)}
    for name in MODALITY_NAMES:
        if record.modalities.get(name):
            frames = read_video(record.modalities[name])
            if name in ("depth", "flow", "skeleton"):  # encodings that are not the usual picture: decode, draw
                modality = get_modality(name)
                size = {"size": frames.shape[1:3]} if name == "skeleton" else {}
                frames = modality.visualize(modality.decode(frames, **record.hints()), **size)
            pictures[name] = frames
    return pictures


def _sample_columns(frames: int, columns: int) -> np.ndarray:
    return np.unique(np.linspace(0, frames - 1, min(columns, frames)).round().astype(int))


def clip_sheet(record: ClipRecord, columns: int = 8, cell: int = 128) -> Image.Image:
    """One clip: a caption line, then rows rgb, depth, flow, segmentation, skeleton, densepose."""
    pictures = stream_pictures(record)
    frames_idx = _sample_columns(len(pictures["rgb"]), columns)
    h, w = pictures["rgb"].shape[1:3]
    scale = max(1, round(cell / max(h, w)))
    ch, cw = h * scale, w * scale
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (LABEL_WIDTH + len(frames_idx) * (cw + 2), CAPTION_HEIGHT + len(pictures) * (ch + 2)),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), record.caption, fill=(0, 0, 0), font=font)
    for row, (name, video) in enumerate(pictures.items()):
        y = CAPTION_HEIGHT + row * (ch + 2)
        draw.text((4, y + ch // 2 - 6), name, fill=(0, 0, 0), font=font)
        for col, t in enumerate(frames_idx):
            tile = Image.fromarray(video[t]).resize((cw, ch), Image.NEAREST)
            sheet.paste(tile, (LABEL_WIDTH + col * (cw + 2), y))
    return sheet


def write_contact_sheet(manifest: Path, out: Path, clips: int = 2, columns: int = 8) -> Path:
    """Stack the contact sheets of the first `clips` clips of a manifest into one PNG."""
    records = read_manifest(manifest)[:clips]
    sheets = [clip_sheet(r, columns) for r in records]
    width = max(s.width for s in sheets)
    canvas = Image.new("RGB", (width, sum(s.height for s in sheets) + GAP * (len(sheets) - 1)), (255, 255, 255))
    y = 0
    for s in sheets:
        canvas.paste(s, (0, y))
        y += s.height + GAP
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
