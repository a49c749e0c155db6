"""Video files with PyAV: exact (lossless) modality videos, near-lossless RGB videos.

Codec choices (measured on this machine, see tests/test_data.py and the module notes below):
- lossless=True: H.264 in RGB (libx264rgb, qp 0, preset medium, no chroma subsampling); exact
  round trip at any size (odd ones included). On flat modality pictures it is 2-5x smaller than
  FFV1 (33x256x256 segmentation: 15 KB vs 80 KB; depth: 448 KB vs 670 KB) at similar speed.
  Works in .mkv (our default) and .mp4.
- lossless=False: H.264 yuv444p, crf 12 (no chroma subsampling, so odd sizes work and coloured
  edges stay sharp): 39-42 dB PSNR on rendered scenes with sensor-like noise, > 45 dB on flat
  pictures, about 10x smaller than lossless. (yuv420p loses ~6 dB on coloured edges and needs
  even sizes.) Note: 4:4:4 H.264 is not played by some browsers; transcode for web pages.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

__all__ = ["VideoReadError", "write_video", "read_video", "probe_video", "RGB_CRF"]

RGB_CRF = 12


class VideoReadError(RuntimeError):
    """A video file is missing, unreadable, truncated or not what was asked for."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video expects uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"write_video got an empty video of shape {frames.shape}")
    return np.ascontiguousarray(frames)


def write_video(path: str | Path, frames: np.ndarray, fps: float = 16.0, lossless: bool = True,
                crf: int = RGB_CRF) -> Path:
    """Write uint8 frames (F, H, W, 3) to `path` (.mkv or .mp4); lossless for modality videos,
    H.264 4:4:4 at `crf` for RGB. Returns the path."""
    frames = _check_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = frames.shape
    if lossless:
        codec, pix_fmt, options = "libx264rgb", "rgb24", {"qp": "0", "preset": "medium"}
    else:
        codec, pix_fmt, options = "libx264", "yuv444p", {"crf": str(int(crf)), "preset": "medium"}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _open(path: Path):
    if not path.is_file():
        raise VideoReadError(path, "file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoReadError(path, f"not a readable video ({error})") from error
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "the file has no video stream")
    return container


def read_video(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode a video to uint8 (F, H, W, 3). With `indices`, return only those frames (in the order
    given, repeats allowed) and stop decoding after the last one needed."""
    path = Path(path)
    wanted = None if indices is None else np.asarray(indices, dtype=np.int64)
    if wanted is not None and wanted.size and wanted.min() < 0:
        raise ValueError(f"read_video({path}): frame indices must be >= 0, got {wanted.min()}")
    last = None if wanted is None or wanted.size == 0 else int(wanted.max())
    frames: list[np.ndarray] = []
    container = _open(path)
    try:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if last is not None and len(frames) > last:
                break
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoReadError(path, f"decoding failed after {len(frames)} frames ({error})") from error
    finally:
        container.close()
    if not frames:
        raise VideoReadError(path, "no frames could be decoded")
    if wanted is None:
        return np.stack(frames)
    if last is not None and last >= len(frames):
        raise VideoReadError(path, f"frame {last} requested but the video has {len(frames)} frames")
    if wanted.size == 0:
        return np.zeros((0, *frames[0].shape), np.uint8)
    return np.stack([frames[i] for i in wanted])


def probe_video(path: str | Path) -> tuple[int, int, int, float]:
    """(frames, height, width, fps) without decoding pictures (frames are counted by demuxing)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        height, width = stream.codec_context.height, stream.codec_context.width
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoReadError(path, f"demuxing failed ({error})") from error
    finally:
        container.close()
    if count == 0 or height <= 0 or width <= 0:
        raise VideoReadError(path, "the video stream is empty")
    return count, int(height), int(width), float(rate) if rate else 0.0
