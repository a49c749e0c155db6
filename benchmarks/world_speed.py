"""Time the procedural world: render-only per clip, and the full `unityvideo world` export.

Usage: python benchmarks/world_speed.py [--clips 256] [--frames 16] [--size 64 64]
Writes benchmarks/results/world_speed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unityvideo.world import WorldConfig, generate_clip

RESULTS = Path(__file__).parent / "results" / "world_speed.json"


def render_seconds_per_clip(frames: int, size: tuple[int, int], clips: int = 8) -> float:
    torch.set_num_threads(1)
    generate_clip(0, "train", 0, frames=frames, size=size, config=WorldConfig())  # warm-up
    start = time.perf_counter()
    for i in range(clips):
        generate_clip(0, "train", i, frames=frames, size=size, config=WorldConfig())
    return (time.perf_counter() - start) / clips


def export_seconds(clips: int, frames: int, size: tuple[int, int]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "unityvideo.cli", "world", "--out", tmp, "--clips", str(clips),
               "--frames", str(frames), "--size", str(size[0]), str(size[1])]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64))
    args = parser.parse_args()
    size = tuple(args.size)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "render_s_per_clip_1proc": {
            f"{args.frames}x64x64": render_seconds_per_clip(args.frames, (64, 64)),
            f"{args.frames}x128x128": render_seconds_per_clip(args.frames, (128, 128)),
        },
        "export": {"clips": args.clips, "frames": args.frames, "size": list(size),
                   "seconds": export_seconds(args.clips, args.frames, size)},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"{'what':44s} {'seconds':>8s}")
    for shape, s in result["render_s_per_clip_1proc"].items():
        print(f"{'render one clip ' + shape + ' (1 process)':44s} {s:8.3f}")
    e = result["export"]
    print(f"{'unityvideo world --clips %d --frames %d --size %d %d' % (e['clips'], e['frames'], *e['size']):44s} "
          f"{e['seconds']:8.1f}")


if __name__ == "__main__":
    main()
