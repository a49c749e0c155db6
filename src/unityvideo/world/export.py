"""Write procedural-world clips to disk as a UnityVideo dataset.

Layout: DIR/clips/<clip_id>/{rgb video, one video per modality, raw.npz, row.json} and DIR/manifest.csv.
A clip is written into a temporary folder and renamed into place once complete, so a crash never leaves
a half-written clip behind and a rerun renders only what is missing. The manifest is rebuilt from every
finished clip's row.json, so train and test splits can share one folder.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from unityvideo.data.manifest import ClipRecord, recorded_encodings, write_encodings, write_manifest
from unityvideo.data.raw import save_raw
from unityvideo.data.video import write_video
from unityvideo.modalities import MODALITY_NAMES, check_encodings, default_max_flow, depth_near, get_modality, \
    picture_hints
from unityvideo.resources import check_memory, warn_if_long
from unityvideo.world import WorldClip, WorldConfig, clip_seed, generate_clip

MANIFEST_NAME = "manifest.csv"
ROW_NAME = "row.json"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Measured on the 2-core CPU machine (one 16x256x256 clip, render + encode + write: peak RSS 305 MB
# over the interpreter's; benchmarks/world_speed.py: 256 clips of 16x64x64 in 20.5 s on 2 processes).
BYTES_PER_PIXEL_FRAME = 310
SECONDS_PER_PIXEL_FRAME = 2.5e-6


@dataclass
class ExportSpec:
    out: Path
    clips: int
    frames: int = 16
    size: tuple[int, int] = (64, 64)
    seed: int = 0
    split: str = "train"
    fps: int = 8
    workers: int | None = None
    world: WorldConfig = field(default_factory=WorldConfig)

    def validate(self) -> None:
        if self.clips < 1:
            raise ValueError(f"--clips must be at least 1, got {self.clips}")
        if self.frames < 2:
            raise ValueError(f"--frames must be at least 2 (flow needs a next frame), got {self.frames}")
        if min(self.size) < 16:
            raise ValueError(f"--size must be at least 16 16 pixels, got {self.size[0]} {self.size[1]}")
        if self.split not in ("train", "test"):
            raise ValueError(f"--split must be 'train' or 'test', got {self.split!r}")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out}: is a file, not a folder; name a folder (created if missing)")
        pixels = self.frames * self.size[0] * self.size[1]
        workers = self.worker_count(self.clips)
        check_memory(pixels * BYTES_PER_PIXEL_FRAME * workers,
                     f"rendering {self.frames} frames of {self.size[0]}x{self.size[1]} in {workers} process(es)",
                     "lower --frames or --size (or --workers)")
        warn_if_long(self.clips * pixels * SECONDS_PER_PIXEL_FRAME / workers, f"rendering {self.clips} clips")

    def worker_count(self, clips: int) -> int:
        return max(1, min(self.workers or os.cpu_count() or 1, clips or 1))


@dataclass
class ExportResult:
    manifest: Path
    rendered: int
    skipped: int
    seconds: float


def clip_id(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


def encode_streams(clip: WorldClip) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Encode every modality of a clip as RGB frames; returns the frames and the decoding hints."""
    size = clip.rgb.shape[1:3]
    hints = {"depth_near": depth_near(clip.depth), "flow_max": default_max_flow(*size)}
    encode_hints = picture_hints(size, hints["depth_near"], hints["flow_max"])
    streams = {"rgb": clip.rgb}
    for name in MODALITY_NAMES:
        streams[name] = get_modality(name).encode(getattr(clip, name), **encode_hints)
    return streams, hints


def raw_arrays(clip: WorldClip) -> dict:
    """The raw ground truth stored next to the videos (everything needed to score estimation)."""
    return {
        "rgb": clip.rgb, "depth": clip.depth, "flow": clip.flow, "flow_valid": clip.flow_valid,
        "segmentation": clip.segmentation, "skeleton": clip.skeleton, "densepose": clip.densepose,
        "intrinsics": clip.intrinsics, "world_to_camera": clip.world_to_camera,
    }


def _export_one(job: tuple[ExportSpec, int]) -> dict:
    spec, index = job
    cid = clip_id(spec.split, index)
    final = spec.out / "clips" / cid
    tmp = spec.out / "clips" / f".{cid}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    clip = generate_clip(spec.seed, spec.split, index, frames=spec.frames, size=spec.size,
                         fps=spec.fps, config=spec.world)
    streams, hints = encode_streams(clip)
    paths = {}
    for name, frames in streams.items():
        filename = f"{name}.mp4" if name == "rgb" else f"{name}.mkv"
        write_video(tmp / filename, frames, fps=spec.fps, lossless=name != "rgb")
        paths[name] = f"clips/{cid}/{filename}"
    meta = {"caption": clip.caption, "instances": clip.instances, "person_ids": clip.person_ids,
            "clip_id": cid, **hints, **clip.meta}
    save_raw(tmp / "raw.npz", raw_arrays(clip), meta=meta)
    row = {"clip_id": cid, "split": spec.split, "index": index, "seed": clip_seed(spec.seed, spec.split, index),
           "caption": clip.caption, "paths": paths, "raw": f"clips/{cid}/raw.npz",
           "frames": spec.frames, "height": spec.size[0], "width": spec.size[1], "fps": spec.fps, **hints}
    (tmp / ROW_NAME).write_text(json.dumps(row, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return row


def _finished(out: Path, cid: str) -> bool:
    return (out / "clips" / cid / ROW_NAME).is_file()


def _record(row: dict) -> ClipRecord:
    return ClipRecord(
        rgb=row["paths"]["rgb"], caption=row["caption"],
        modalities={name: row["paths"][name] for name in MODALITY_NAMES},
        raw=row["raw"], split=row["split"], seed=row["seed"], clip_id=row["clip_id"],
        frames=row["frames"], height=row["height"], width=row["width"], fps=row["fps"],
        depth_near=row["depth_near"], flow_max=row["flow_max"],
    )


def rebuild_manifest(out: Path) -> Path:
    """Collect the row.json of every finished clip into DIR/manifest.csv, ordered by split and index."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "clips").glob(f"*/{ROW_NAME}"))]
    rows.sort(key=lambda r: (r["split"] != "train", r["index"]))
    manifest = out / MANIFEST_NAME
    write_manifest(manifest, [_record(r) for r in rows])
    write_encodings(manifest)
    return manifest


def _check_same_formats(out: Path) -> None:
    """Clips are only added to a folder whose finished clips use this version's picture formats."""
    if any((out / "clips").glob(f"*/{ROW_NAME}")):
        check_encodings(recorded_encodings(out / MANIFEST_NAME) or {}, MODALITY_NAMES, str(out),
                        "render into a new folder (a rerun only adds missing clips)")


def export_world(spec: ExportSpec) -> ExportResult:
    """Render `spec.clips` clips of one split into `spec.out`, in parallel, with a progress bar."""
    spec.validate()
    start = time.perf_counter()
    _check_same_formats(spec.out)
    (spec.out / "clips").mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(spec.clips) if not _finished(spec.out, clip_id(spec.split, i))]
    workers = spec.worker_count(len(todo))
    jobs = [(spec, i) for i in todo]
    bar = tqdm(total=len(todo), desc=f"world {spec.split}", unit="clip", disable=not todo)
    if workers == 1:
        for job in jobs:
            _export_one(job)
            bar.update()
    else:
        # Rendering is numpy-bound: one process per core, each single-threaded.
        with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
            for _ in pool.imap_unordered(_export_one, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                bar.update()
    bar.close()
    manifest = rebuild_manifest(spec.out)
    return ExportResult(manifest, len(todo), spec.clips - len(todo), time.perf_counter() - start)


def _init_worker(parent: int) -> None:
    import torch

    torch.set_num_threads(1)
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Make the kernel end this worker when its parent process dies, however it dies (SIGKILL included):
    a killed `unityvideo world` must not leave workers rendering. Linux only (prctl); elsewhere the
    pool's own shutdown on Ctrl-C is what stops them."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
