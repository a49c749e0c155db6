"""Identity stability of the built-in people segmentation on OpenCV's vtest.avi (a street seen from
above, 3-6 walkers in view at a time, 795 frames at 10 fps).

There is no ground truth, so the figures are the usual proxies for identity switches: how many
track ids the clip needs (every switch starts a new id; a perfect tracker needs about one per
person), per 100 frames, how many of them live under 10 frames (fragments), and the mean track
length. Lower births and fragments with longer tracks mean fewer switches.

    python benchmarks/tracking_vtest.py [VTEST] --start 400 --frames 200 --out benchmarks/results/tracking_vtest.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from unityvideo.annotate.teachers import build_teacher
from unityvideo.data import read_video

DEFAULT = Path.home() / ".cache/unityvideo-test-data/opencv-doc/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def track_stats(ids: np.ndarray) -> dict:
    """Births, fragments and lengths of the tracks in a (F, H, W) id map."""
    frames = len(ids)
    present = {}
    for t, frame in enumerate(ids):
        for i in np.unique(frame):
            if i:
                present.setdefault(int(i), []).append(t)
    lengths = np.array([len(v) for v in present.values()])
    people_per_frame = np.mean([len(np.unique(f)) - 1 for f in ids])
    return dict(frames=frames, track_ids=len(present), births_per_100_frames=100 * len(present) / frames,
                fragments_under_10_frames=int((lengths < 10).sum()), mean_track_length=float(lengths.mean()),
                people_per_frame=float(people_per_frame))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, nargs="?", default=DEFAULT)
    parser.add_argument("--start", type=int, default=400, help="first frame (0-199 were used to tune the tracker)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    frames = read_video(args.video, list(range(args.start, args.start + args.frames)))
    began = time.perf_counter()
    ids = build_teacher("segmentation").annotate(frames).raw
    stats = {"video": args.video.name, "start": args.start, **track_stats(ids),
             "seconds": round(time.perf_counter() - began, 1)}
    print(json.dumps(stats, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(stats, indent=1) + "\n")
    return stats


if __name__ == "__main__":
    main()
